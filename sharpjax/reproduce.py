"""The paper's question at small scale: does RL help by sharpening the base model, or by the task reward?

`python -m sharpjax` runs it on a 2-core CPU in minutes, with the same code paths as the 3B runs:
  1. the arithmetic base model: the calibrated one shipped in sharpjax/assets (the same weights on
     every machine), or with `--retrain-base` one trained here (SFT, cached; `sharpjax.sft`),
  2. its evaluation on held-out problems (16 samples each at T=1: pass@k, maj@k, length),
  3. RL from it with each reward of the family (task; likelihood maximization, also with
     fixed-length ignore-EOS rollouts; power sampling alpha=2, 4; tilted sampling), each
     evaluated the same way (last and best),
  4. a results table (results.md / results.json), its figures (figures_*.png, `sharpjax.figures`)
     and the logs the notebooks plot.

Step 2 also evaluates the base model sharpened at inference time, no training (`--inference-modes`):
power sampling pi^alpha (`sharpjax.rollout.power`) and the base model at temperature 1/alpha,
on the same problems and key, with the token cost per problem of every row (rejected proposals
and particles included), so the table says what each way of sharpening costs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence

import jax
import numpy as np

from sharpjax.configs import reward_preset
from sharpjax.configs.small_scale import arithmetic_rl_config
from sharpjax.configs.small_scale import size as small_scale_size
from sharpjax.errors import ConfigError, SharpjaxError
from sharpjax.eval.harness import evaluate
from sharpjax.figures import write_figures
from sharpjax.models.hf import load_model
from sharpjax.models.tokenizer import load_tokenizer
from sharpjax.rollout.power import PowerConfig, generate_power_text
from sharpjax.rollout.sampler import sampling_config_for
from sharpjax.sft import resolve_model_dir
from sharpjax.tasks import arithmetic
from sharpjax.train.config import RunConfig
from sharpjax.train.lock import WorkdirLock, check_workdir
from sharpjax.train.metrics import read_metrics
from sharpjax.train.trainer import train

log = logging.getLogger(__name__)

DEFAULT_MODES = ("task", "likelihood", "likelihood:fixed", "power-a2", "power-a4", "tilted-a4-b10")
TEST_SEED = 777_777  # held-out problems: disjoint from SFT (seed 0..), RL train and validation seeds
KS = (1, 2, 4, 8, 16)
FIXED_LENGTH = 48  # tokens per training response of a ':fixed' run; the SFT model's answers are ~24
ROW_FILE = "reproduce_eval.json"  # a finished run's evaluation, reused when the job is run again
TABLE_KEYS = ("pass@1", "pass@4", "pass@16", "maj@16", "trap_pass@1", "trap_maj@16", "shortcut_rate", "mean_length",
              "no_answer_rate", "token_cost_per_problem", "prefill_tokens_per_problem")
# Inference-time sharpening of the base model (no training): "temp-a<alpha>" samples at T = 1/alpha,
# "power-mcmc-a<alpha>" / "power-smc-a<alpha>" sample pi^alpha (sharpjax.rollout.power).
# power-mcmc-a4 draws ~8x the tokens of plain sampling (~4.5 min at 300 x 16 on 2 cores, a third of the
# default job): it is in the 3-seed table's command (BENCHMARKS.md), not in the default job.
DEFAULT_INFERENCE_MODES = ("temp-a2", "temp-a4")
INFERENCE_SAMPLERS = ("temp", "power-mcmc", "power-smc")
# Power samplers sized to the arithmetic answers (~24 tokens of a 64-token budget), not to the
# paper's 3k-token ones (Karan & Du: 16 blocks of 192, ~10 MH steps): blocks of 8 tokens give an
# answer ~3 blocks, so MH revisits each part of it; 2 MH steps per block resample ~16 suffixes
# per chain over the 8 blocks of the budget; SMC with 4 particles resamples every 8 tokens.
INFERENCE_POWER = dict(block_size=8, mh_steps=2, num_particles=4)
INFERENCE_ROW_DIR = "inference"  # workdir/inference/<mode>.json: a finished inference row, reused on rerun


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """What the main job runs.

    Attributes:
      size: a size of `sharpjax.configs.small_scale.SIZES` (base model, RL batch and steps).
      modes: reward presets, each optionally ':fixed' (ignore-EOS runs).
      seeds: RL seeds; the table reports mean and std over them.
      test_problems, eval_samples: held-out evaluation (None: the size's defaults).
      max_new_tokens: response budget of the held-out evaluation.
      retrain_base: train the base model on this machine (cached) instead of using the shipped one.
      inference_modes: inference-time rows from the base model (`parse_inference_mode`).
    """

    size: str = "default"
    modes: tuple[str, ...] = DEFAULT_MODES
    seeds: tuple[int, ...] = (0,)
    test_problems: int | None = None
    eval_samples: int | None = None
    max_new_tokens: int = 64
    retrain_base: bool = False
    inference_modes: tuple[str, ...] = DEFAULT_INFERENCE_MODES

    def __post_init__(self):
        s = small_scale_size(self.size)  # raises ConfigError naming the valid sizes
        if self.test_problems is None:
            object.__setattr__(self, "test_problems", s.test_problems)
        if self.eval_samples is None:
            object.__setattr__(self, "eval_samples", s.test_samples)
        for mode in self.modes:
            parse_mode(mode)
        for mode in self.inference_modes:
            parse_inference_mode(mode)
        if not self.seeds:
            raise ConfigError("ReproduceConfig.seeds is empty: give at least one seed.")


class RunInterrupted(SharpjaxError):
    """An RL run of the main job stopped early (SIGTERM / Ctrl-C) after checkpointing."""


def _evaluate_dir(model_dir: str, problems, settings: ReproduceConfig, key) -> dict[str, float]:
    params, model = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    sampling = sampling_config_for(
        model, tokenizer, max_new_tokens=settings.max_new_tokens, num_samples=settings.eval_samples
    )
    result = evaluate(
        params, model, tokenizer, problems, sampling=sampling, key=key, batch_size=64,
        render_fn=lambda text: arithmetic.render(tokenizer, text), verify_fn=arithmetic.verify, ks=KS,
        keep_responses=True, progress=False,
    )
    return _row(result, problems)


def _row(result, problems) -> dict[str, float]:
    """An evaluation's summary plus the testbed's mechanism: the trap problems' pass@1 and maj@16
    (`arithmetic.is_trap`: the shortcut's answer is wrong) and the share of their responses that
    stop early (`shortcut_rate`, `arithmetic.stopped_early`)."""
    row = {k: float(v) for k, v in result.summary.items() if isinstance(v, (int, float))}
    trap = arithmetic.trap_summary(problems, result.records, KS)
    row.update({k: v for k, v in trap.items() if k in TABLE_KEYS})
    return row


def parse_inference_mode(mode: str) -> tuple[str, float]:
    """"power-mcmc-a4" -> ("power-mcmc", 4.0); "temp-a2" -> ("temp", 2.0): an inference-time row's sampler and alpha."""
    sampler, sep, alpha = mode.rpartition("-a")
    try:
        value = float(alpha) if sep else float("nan")
    except ValueError:
        value = float("nan")
    if sampler not in INFERENCE_SAMPLERS or not value > 0:
        raise ConfigError(
            f"inference mode {mode!r}: expected <sampler>-a<alpha> with sampler one of {', '.join(INFERENCE_SAMPLERS)} "
            "and alpha > 0 (e.g. power-mcmc-a4, temp-a2)."
        )
    return sampler, value


def inference_power_config(mode: str) -> PowerConfig | None:
    """The `PowerConfig` of a power-sampling inference mode (`INFERENCE_POWER`); None for "temp-a<alpha>"."""
    sampler, alpha = parse_inference_mode(mode)
    return None if sampler == "temp" else PowerConfig(alpha=alpha, **INFERENCE_POWER)


def _evaluate_inference(model_dir: str, problems, settings: ReproduceConfig, key, mode: str) -> dict[str, float]:
    """The base model sharpened at inference time: at T = 1/alpha, or power-sampled from pi^alpha.

    Same problems, key, samples and budget as the base row (`_evaluate_dir`); only the sampler differs.
    """
    sampler, alpha = parse_inference_mode(mode)
    power = inference_power_config(mode)
    params, model = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    sampling = sampling_config_for(
        model, tokenizer, max_new_tokens=settings.max_new_tokens, num_samples=settings.eval_samples,
        temperature=1.0 / alpha if power is None else 1.0,  # a power sampler draws at 1/alpha itself
    )
    generate_fn = None
    batch_size = 64
    accept_rates = []  # MH acceptance of every chain: how far the chains moved from the proposal's draws
    if power is not None:
        def generate_fn(*args, **kwargs):
            texts, out = generate_power_text(*args, method=sampler, power=power, **kwargs)
            accept_rates.append(np.asarray(out.accept_rate))
            return texts, out

        if sampler == "power-smc":  # N particles per sample: the same number of sampler rows per call
            batch_size = max(1, batch_size // power.num_particles)
    t0 = time.perf_counter()
    result = evaluate(
        params, model, tokenizer, problems, sampling=sampling, key=key, batch_size=batch_size,
        render_fn=lambda text: arithmetic.render(tokenizer, text), verify_fn=arithmetic.verify, ks=KS,
        keep_responses=True, progress=False, generate_fn=generate_fn,
    )
    row = _row(result, problems)
    row["eval_seconds"] = time.perf_counter() - t0  # wall time of this machine, compile included
    if sampler == "power-mcmc":  # (the last batch's padding prompts included: a mean over chains)
        row["mh_accept_rate"] = float(np.mean(np.concatenate(accept_rates)))
    return row


def _inference_rows(workdir: str, base_dir: str, problems, settings: ReproduceConfig, key, results: dict,
                    say) -> dict[str, dict[str, float]]:
    """Every inference-time row, each reused from workdir/inference/<mode>.json if made with the same settings."""
    rows = {}
    for mode in settings.inference_modes:
        power = inference_power_config(mode)
        identity = {**_eval_identity(results, settings), "mode": mode,
                    "power": None if power is None else dataclasses.asdict(power)}
        path = os.path.join(workdir, INFERENCE_ROW_DIR, f"{mode}.json")
        saved = read_saved_json(path)
        if saved is not None and saved.get("eval_settings") == identity:
            rows[mode] = saved["row"]
            say(f"  -- infer:{mode}: already evaluated in {path}; reusing it")
        else:
            say(f"  -- infer:{mode}: the base model sharpened at inference time"
                + (f" ({power})" if power is not None else ""))
            rows[mode] = _evaluate_inference(base_dir, problems, settings, key, mode)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, json.dumps({"eval_settings": identity, "row": rows[mode]}, indent=2))
        row = rows[mode]
        say(f"     pass@1 {row['pass@1']:.3f}, length {row['mean_length']:.1f}, token cost "
            f"{row['token_cost_per_problem']:.0f} ({_cost_ratio(row, results['base']):.1f}x plain sampling)"
            + (f", MH acceptance {row['mh_accept_rate']:.2f}" if "mh_accept_rate" in row else ""))
    return rows


def _cost_ratio(row: dict, base: dict, key: str = "token_cost_per_problem") -> float:
    """Tokens drawn (or, key="prefill_tokens_per_problem", prefilled) per problem relative to the
    base model's plain sampling in the same run. Inference only: an RL row's training is not in it."""
    if key not in row or not base.get(key):
        return float("nan")
    return row[key] / base[key]


def parse_mode(mode: str) -> tuple[str, bool]:
    """"likelihood" -> ("likelihood", False); "likelihood:fixed" -> ("likelihood", True): ignore-EOS rollouts."""
    preset, _, suffix = mode.partition(":")
    if suffix not in ("", "fixed"):
        raise ConfigError(f"mode {mode!r}: the only suffix is ':fixed' (fixed-length, ignore-EOS rollouts).")
    reward_preset(preset)  # raises on an unknown preset, naming the valid ones
    return preset, suffix == "fixed"


def run_name(mode: str, seed: int) -> str:
    return f"{mode.replace(':', '-')}_seed{seed}"


def _training_trends(workdir: str) -> dict[str, float]:
    """First vs last few steps of the quantities the paper's argument is about."""
    records = [r for r in read_metrics(workdir) if "reward/reward" in r]
    out = {}
    for key, name in (("kl_to_base", "kl_to_base"), ("reward/ref_logp_sum", "base_loglik"),
                      ("response_length", "train_length"), ("reward/task", "train_task_reward")):
        values = [r[key] for r in records if key in r]
        if values:
            w = max(1, len(values) // 5)
            out[f"{name}_first"] = float(np.mean(values[:w]))
            out[f"{name}_last"] = float(np.mean(values[-w:]))
    return out


def run(workdir: str, settings: ReproduceConfig = ReproduceConfig(), *, progress: bool = True) -> dict:
    """Runs the whole pipeline; returns (and writes to workdir/results.json) the results."""
    for mode in settings.modes:  # fail on a typo now, not after the SFT and the first runs
        config = _run_config_dict(settings, mode, seed=settings.seeds[0], base_dir=None)
        RunConfig.from_config_dict(config)
    check_workdir(workdir)
    # One main job per workdir: a second one stops here, not after redoing the base evaluation.
    with WorkdirLock(workdir):
        return _run(workdir, settings, progress)


def _run(workdir: str, settings: ReproduceConfig, progress: bool) -> dict:
    t0 = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    base_name = arithmetic_rl_config(settings.size).model_dir
    say(f"[1/4] base model: {base_name} " + ("(trained here, then cached)" if settings.retrain_base else "(shipped)"))
    base_dir = resolve_model_dir(base_name, retrain=settings.retrain_base)
    difficulty = arithmetic.difficulty_for("auto", base_dir)
    problems = arithmetic.generate_problems(settings.test_problems, seed=TEST_SEED, difficulty=difficulty, split="test")
    key = jax.random.key(TEST_SEED)

    say(f"[2/4] evaluating the base model on {len(problems)} held-out problems x {settings.eval_samples} samples")
    results = {"settings": dataclasses.asdict(settings), "base_model": base_dir,
               "base": _evaluate_dir(base_dir, problems, settings, key), "runs": {}}
    say(f"      base: pass@1 {results['base']['pass@1']:.3f}, mean length {results['base']['mean_length']:.1f}")
    results["inference"] = _inference_rows(workdir, base_dir, problems, settings, key, results, say)

    say(f"[3/4] RL: {len(settings.modes)} reward modes x {len(settings.seeds)} seeds")
    total_runs, runs_seen, run_seconds = len(settings.modes) * len(settings.seeds), 0, []
    for mode in settings.modes:
        preset, fixed_length = parse_mode(mode)
        for seed in settings.seeds:
            runs_seen += 1
            run_start = time.perf_counter()
            name = run_name(mode, seed)
            run_dir = os.path.join(workdir, "runs", name)
            config = _run_config_dict(settings, mode, seed=seed, base_dir=base_dir)
            run_config = RunConfig.from_config_dict(config)
            identity = {**_eval_identity(results, settings), "run_config": json.loads(json.dumps(run_config.to_dict()))}
            row = _finished_row(run_dir, identity)
            if row is not None:
                say(f"  -- {name}: already trained and evaluated in {run_dir}; reusing it")
            else:
                say(f"  -- {name}: reward {dict(config.reward)}{', fixed length' if fixed_length else ''}")
                # Resumes from the run's checkpoints if an earlier invocation was interrupted.
                out = train(run_config, run_dir, progress=progress)
                if out.interrupted:  # no evaluation row: the next invocation resumes this run
                    raise RunInterrupted(
                        f"{name} stopped at step {out.last_step} of {run_config.train.steps} (checkpointed); "
                        "run the same command again to resume it."
                    )
                row = {"workdir": run_dir, "best_step": out.best_step, **_training_trends(run_dir)}
                for which in ("last", "best"):
                    if which == "best" and out.best_step == out.last_step and "last" in row:
                        row["best"] = row["last"]  # the same weights: no second evaluation
                    elif which in out.export_dirs:
                        row[which] = _evaluate_dir(out.export_dirs[which], problems, settings, key)
                saved = {"eval_settings": identity, "row": row}
                write_atomic(os.path.join(run_dir, ROW_FILE), json.dumps(saved, indent=2))
                run_seconds.append(time.perf_counter() - run_start)
            results["runs"][name] = row
            say(f"     last: pass@1 {row['last']['pass@1']:.3f}, length {row['last']['mean_length']:.1f}, "
                f"KL to base {row.get('kl_to_base_last', float('nan')):.2f}  "
                f"[{runs_seen}/{total_runs} runs, {_minutes(time.perf_counter() - t0)} elapsed"
                + (f", about {_minutes(np.mean(run_seconds) * (total_runs - runs_seen))} left]"
                   if run_seconds and runs_seen < total_runs else "]"))

    results["summary"] = summarize_runs(results, settings)
    results["elapsed_s"] = time.perf_counter() - t0
    write_atomic(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    table = results_markdown(results)
    write_atomic(os.path.join(workdir, "results.md"), table + "\n")
    figures = write_figures(workdir, results)
    say("[4/4] results (held-out arithmetic, T=1; mean +- std over seeds)\n")
    say(table)
    say(f"\nresults: {workdir}/results.md, results.json; figures: {', '.join(os.path.basename(f) for f in figures)}; "
        f"TensorBoard: tensorboard --logdir {workdir}/runs; more figures: notebooks/training_curves.ipynb "
        f"(SHARPJAX_RUNS_DIR={workdir})")
    say(f"total time {results['elapsed_s']:.0f} s")
    say(f"how much of each policy is sharpening the base (pass@k crossings, coverage, majorities, base likelihood):\n"
        f"  {diagnose_command(workdir, results, settings)}")
    return results


def diagnose_command(workdir: str, results: dict, settings: ReproduceConfig) -> str:
    """The `python -m sharpjax.diagnose` command for every run's last policy against the base, on the job's problems
    and at its evaluation's samples per problem (diagnose's own default, n = 64 for a benchmark's pass@64, would
    make it 4x the job's evaluation on a CPU); 512 rows per sampler call, as diagnose's default."""
    policies = " ".join(f"--policy {name}={os.path.join(row['workdir'], 'export', 'last')}"
                        for name, row in results["runs"].items())
    n = settings.eval_samples
    return (f"python -m sharpjax.diagnose --task arithmetic --benchmarks arithmetic --limit {settings.test_problems} "
            f"--n {n} --baseline_n {n} --batch_size {max(1, 512 // n)} "
            f"--max_new_tokens {settings.max_new_tokens} --block-size {INFERENCE_POWER['block_size']} --mh-steps "
            f"{INFERENCE_POWER['mh_steps']} --particles {INFERENCE_POWER['num_particles']} "
            f"--base {results['base_model']} {policies} --out {os.path.join(workdir, 'diagnosis')}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _run_config_dict(settings: ReproduceConfig, mode: str, *, seed: int, base_dir: str | None):
    """The RL run of one (mode, seed) of the main job, as a config dict (base_dir None: `sft:<size>`)."""
    preset, fixed_length = parse_mode(mode)
    config = arithmetic_rl_config(settings.size, preset)
    if base_dir is not None:
        config.model_dir = base_dir
    config.train.seed = seed
    if fixed_length:  # every training response exactly FIXED_LENGTH tokens, EOS or not
        config.rollout.ignore_eos = True
        config.rollout.max_new_tokens = FIXED_LENGTH
    return config


def _eval_identity(results: dict, settings: ReproduceConfig) -> dict:
    """What a run's evaluation depends on besides the run: reuse a saved row only if all of it matches."""
    return {"base_model": results["base_model"], "size": settings.size, "test_problems": settings.test_problems,
            "eval_samples": settings.eval_samples, "max_new_tokens": settings.max_new_tokens}


def _finished_row(run_dir: str, identity: dict) -> dict | None:
    """The saved evaluation of a finished run, if it was made with the same run config and eval settings."""
    saved = read_saved_json(os.path.join(run_dir, ROW_FILE))
    if saved is None:
        return None
    row = saved.get("row", {})
    # A row without the last policy's evaluation is not finished (e.g. written by older code after a SIGTERM).
    return row if saved.get("eval_settings") == identity and "last" in row else None


def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename: a kill mid-write leaves the
    previous file (or none), never a truncated one that every rerun would trip on."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_saved_json(path: str) -> dict | None:
    """A results file the job wrote earlier, or None when there is none or it is damaged (an empty
    or truncated file from older code killed mid-write): then it is redone, with a warning naming it."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
    except (OSError, ValueError) as e:
        log.warning("%s is damaged (%s); redoing what it held", path, str(e).splitlines()[0] if str(e) else e)
        return None
    return saved


def summarize_runs(results: dict, settings: ReproduceConfig) -> dict[str, dict[str, tuple[float, float]]]:
    """mode -> metric -> (mean, std) over seeds of the last checkpoint's evaluation and trends."""
    summary = {}
    for mode in settings.modes:
        rows = [results["runs"][run_name(mode, s)] for s in settings.seeds]
        metrics = {}
        for k in TABLE_KEYS:
            vals = [r["last"][k] for r in rows if k in r["last"]]
            if vals:
                metrics[k] = (float(np.mean(vals)), float(np.std(vals)))
        for k in ("kl_to_base_last", "base_loglik_first", "base_loglik_last"):
            vals = [r[k] for r in rows if k in r]
            if vals:
                metrics[k] = (float(np.mean(vals)), float(np.std(vals)))
        summary[mode] = metrics
    return summary


def results_markdown(results: dict) -> str:
    cols = list(TABLE_KEYS) + ["cost_ratio", "prefill_ratio", "kl_to_base_last", "base_loglik_last"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    base = results["base"]

    def plain_row(name: str, row: dict) -> str:
        row = {**row, "cost_ratio": _cost_ratio(row, base),
               "prefill_ratio": _cost_ratio(row, base, "prefill_tokens_per_problem")}
        return f"| {name} | " + " | ".join(f"{row[c]:.3f}" if c in row else "" for c in cols) + " |"

    lines.append(plain_row("base", base))
    for mode, row in results.get("inference", {}).items():
        lines.append(plain_row(f"infer:{mode}", row))
    for mode, metrics in results["summary"].items():
        for key, ratio in (("token_cost_per_problem", "cost_ratio"), ("prefill_tokens_per_problem", "prefill_ratio")):
            cost = metrics.get(key)
            if cost is not None and base.get(key):
                metrics = {**metrics, ratio: (cost[0] / base[key], cost[1] / base[key])}
        cells = []
        for c in cols:
            if c in metrics:
                mean, std = metrics[c]
                cells.append(f"{mean:.3f} ± {std:.3f}" if len(results["settings"]["seeds"]) > 1 else f"{mean:.3f}")
            else:
                cells.append("")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("cost_ratio / prefill_ratio: tokens sampled / prefilled per held-out problem relative to the base "
                 "model's plain sampling, inference only (an RL row's training tokens are not in it); power "
                 "rows count every proposal drawn, each re-prefilling its prompt and response prefix.")
    return "\n".join(lines)


def parse_seeds(value: str) -> Sequence[int]:
    """"3" -> seeds 0, 1, 2; "5," or "0,5" -> exactly those seeds."""
    try:
        seeds = tuple(range(int(value))) if value.isdigit() else tuple(int(s) for s in value.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds:
        raise ValueError(f"--seeds {value!r}: give a positive count (3) or a comma list of seeds (0,5 or 2,).")
    return seeds
