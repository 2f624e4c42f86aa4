"""Writes notebooks/training_curves.ipynb with nbformat and, with --execute, runs it with nbclient.

The notebook plots the logs of a `python -m sharpjax` reproduction (sharpjax/reproduce.py):
its results.json / results.md and one training run per reward mode and seed under
`<runs dir>/runs/<mode>_seed<k>/` (metrics.jsonl + config.json). Its source stays reviewable
as plain Python here:

    python -m sharpjax --workdir runs/main                  # the runs (minutes on a CPU)
    python notebooks/build_training_curves.py --execute     # regenerate, run, store outputs + PNGs

SHARPJAX_RUNS_DIR picks the runs directory (default runs/main, relative to the repository root
or the notebook's folder), SHARPJAX_FIGURE_DIR the figure folder (default notebooks/figures);
figures are `training_curves_*.png`. Missing files or metric keys are reported, not fatal.
"""

from __future__ import annotations

import os

import _build  # noqa: E402  (notebooks/ is on sys.path when run as a script)
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

HERE = os.path.dirname(os.path.abspath(__file__))
NOTEBOOK = os.path.join(HERE, "training_curves.ipynb")

CELLS = [
    new_markdown_cell(
        """# Training curves of the small-scale reproduction

`python -m sharpjax` (sharpjax/reproduce.py) trains one RL run per reward mode and seed from the
project's arithmetic base model and evaluates the base model and every run's last (and best)
checkpoint on held-out problems. The question of the paper: do the gains of RL come from
*sharpening* the base model (rewards built from the base model's own likelihood: `likelihood`,
`power-a<alpha>`) or from the task reward (`task`, `tilted-a<alpha>-b<beta_inv>`)?

This notebook reads the run directory (`SHARPJAX_RUNS_DIR`, default `runs/main`) and draws:

1. validation pass@1 vs step, per reward mode (mean over seeds, band: min-max over seeds);
2. pass@k and maj@k vs k on the held-out test problems, base model vs each mode (results.json);
3. response length vs step;
4. KL to the base model and the base model's log-likelihood of the samples vs step;
5. the sharpening instability: advantage std and gradient norm against mean response length;
6. normal vs fixed-length (`rollout.ignore_eos`) runs, when there are any;

and prints the results table. Figures go to `figures/training_curves_*.png`
(`SHARPJAX_FIGURE_DIR` overrides the folder). A missing file or metric is reported in the cell
that needed it and in the summary at the end; nothing here assumes a complete run."""
    ),
    new_code_cell(
        """import json
import os
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from sharpjax import figures
# The main job's plotting (sharpjax/figures.py): (steps, values) of a run's records, the per-step
# mean / min / max over seeds, an axis's labels and legend, the pass@k / maj@k panel.
from sharpjax.figures import RUN_NAME, finish, plot_pass_at_k, seed_stats, series
from sharpjax.train.metrics import read_metrics

MISSING = []  # (figure, what): reported in each cell and summarized at the end


def missing(where, what):
    MISSING.append((where, what))
    print(f"[{where}] missing: {what}")


def find_runs_dir(value):
    path = Path(value).expanduser()
    candidates = [path] if path.is_absolute() else [path, Path("..") / path]  # cwd is notebooks/
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return path


RUNS_DIR = find_runs_dir(os.environ.get("SHARPJAX_RUNS_DIR", "runs/main"))
FIG_DIR = Path(os.environ.get("SHARPJAX_FIGURE_DIR", "figures"))
FIG_DIR.mkdir(parents=True, exist_ok=True)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
print(f"runs dir: {RUNS_DIR}  figures -> {FIG_DIR}/")

RESULTS = None
results_path = RUNS_DIR / "results.json"
if results_path.is_file():
    try:
        RESULTS = json.loads(results_path.read_text())
    except (OSError, ValueError) as err:
        missing("results", f"{results_path} does not parse ({err})")
else:
    missing("results", f"{results_path} (the held-out evaluation: figure 2 and the table need it)")

def load_run(run_dir):
    match = RUN_NAME.match(run_dir.name)
    mode, seed = (match["mode"], int(match["seed"])) if match else (run_dir.name, 0)
    config = {}
    if (run_dir / "config.json").is_file():
        try:
            config = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError) as err:
            missing("runs", f"{run_dir.name}/config.json does not parse ({err})")
    else:
        missing("runs", f"{run_dir.name}/config.json")
    try:
        records = read_metrics(run_dir)
    except Exception as err:  # noqa: BLE001  (a broken log is reported, not fatal)
        missing("runs", f"{run_dir.name}/metrics.jsonl unreadable ({type(err).__name__}: {err})")
        records = []
    train = [r for r in records if not any(k.startswith("val/") for k in r)]
    val = [r for r in records if any(k.startswith("val/") for k in r)]
    ignore_eos = bool((config.get("rollout") or {}).get("ignore_eos", False))
    return {"name": run_dir.name, "mode": mode, "seed": seed, "dir": run_dir, "config": config,
            "train": train, "val": val, "ignore_eos": ignore_eos}


run_root = RUNS_DIR / "runs" if (RUNS_DIR / "runs").is_dir() else RUNS_DIR
run_dirs = sorted(p for p in run_root.glob("*") if (p / "metrics.jsonl").is_file()) if run_root.is_dir() else []
RUNS = [load_run(p) for p in run_dirs]
if not RUNS:
    missing("runs", f"no run directories with a metrics.jsonl under {run_root}")

# Mode order: the reproduction's own order when results.json has it, else alphabetical.
# (a ":fixed" mode's runs are named "<mode>-fixed_seed<n>", as sharpjax.reproduce.run_name does)
order = [m.replace(":", "-") for m in (RESULTS or {}).get("settings", {}).get("modes", [])]
MODES = [m for m in order if any(r["mode"] == m for r in RUNS)]
MODES += sorted({r["mode"] for r in RUNS} - set(MODES))
COLORS = {m: plt.cm.tab10(i % 10) for i, m in enumerate(MODES)}
NORMAL = [r for r in RUNS if not r["ignore_eos"]]
FIXED = [r for r in RUNS if r["ignore_eos"]]
for mode in MODES:
    runs = [r for r in RUNS if r["mode"] == mode]
    steps = [r["train"][-1]["step"] for r in runs if r["train"]]
    print(f"  {mode:16s} seeds {sorted(r['seed'] for r in runs)}, last logged step {max(steps) if steps else '-'}"
          f"{', fixed-length' if any(r['ignore_eos'] for r in runs) else ''}")


def plot_modes(ax, key, where, *, kind="train", runs=None):
    \"\"\"`figures.plot_modes` (mean over seeds per mode, min-max band; a seed's NaN left out), reporting
    the modes without `key`.\"\"\"
    runs = NORMAL if runs is None else runs
    drawn = figures.plot_modes(ax, runs, MODES, COLORS, key, kind, ignore_nan=True)
    absent = [m for m in MODES if m not in drawn and any(r["mode"] == m for r in runs)]
    if absent:
        missing(where, f"'{key}' in the {kind} records of {', '.join(absent)}")
    return bool(drawn)


def save(fig, name):
    path = FIG_DIR / f"training_curves_{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")"""
    ),
    new_markdown_cell(
        """## 1. Validation accuracy during training

`val/<task>/pass@1` is logged every `eval.every` steps (and at step 0) on the validation split: the
fraction of correct samples at temperature 1. Line: mean over seeds; band: min to max over seeds.
The right panel is the training reward's task component (`reward/task`, the accuracy of the
rollouts, before any likelihood term), which every mode logs, whether or not it is rewarded."""
    ),
    new_code_cell(
        """val_keys = sorted({k for r in NORMAL for rec in r["val"] for k in rec if re.fullmatch(r"val/.+/pass@1", k)})
if not val_keys:
    missing("fig 1", "validation pass@1 records ('val/<task>/pass@1') in every run")
panels = val_keys + ["reward/task"]
fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
for ax, key in zip(axes[0], panels):
    kind = "train" if key == "reward/task" else "val"
    has = plot_modes(ax, key, "fig 1", kind=kind)
    title = f"validation pass@1 ({key.split('/')[1]})" if kind == "val" else "rollout accuracy (reward/task)"
    finish(ax, "step", key, title, has, accuracy=True)
fig.tight_layout()
save(fig, "val_pass1")"""
    ),
    new_markdown_cell(
        """## 2. pass@k and maj@k on the held-out test problems

From results.json: the base model and each mode's **last** checkpoint (solid) and **best** checkpoint
by validation pass@1 (dashed, when the run kept one), each the mean over seeds. pass@k is the
unbiased estimate of "at least one of k samples is correct", maj@k the accuracy of the majority
answer of k samples. Sharpening raises pass@1 at small k by concentrating mass on answers the base
model already prefers; if it only sharpens, pass@k at large k does not rise above the base model's."""
    ),
    new_code_cell(
        """if RESULTS is None:
    print("no results.json: figure 2 skipped")
else:
    if not RESULTS.get("base"):
        missing("fig 2", "the base model's evaluation ('base' in results.json)")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, prefix in zip(axes, ("pass", "maj")):
        drawn = plot_pass_at_k(ax, RESULTS, MODES, COLORS, prefix, best_alpha=0.7)  # the main job's panel
        for mode in MODES if prefix == "pass" else ():
            if (mode, "last") not in drawn and any(r["mode"] == mode for r in NORMAL):
                missing("fig 2", f"the last checkpoint's evaluation of {mode}")
        finish(ax, "k (samples per problem)", f"{prefix}@k", f"{prefix}@k, held-out test problems", bool(drawn),
               accuracy=True)
    fig.tight_layout()
    save(fig, "pass_at_k")"""
    ),
    new_markdown_cell(
        """## 3. Response length

Mean number of generated tokens of the training rollouts (`response_length`) and of the
validation samples (`val/<task>/mean_length`). Rewards built from the *sequence* log-likelihood
($L_\\text{ref} = \\log \\pi_\\text{ref}(y)$, a sum over tokens) favour shorter responses, every
token adding a negative term: likelihood and power modes are expected to shorten, the task reward
not (closed_forms.ipynb, section 3, shows the exact version on a toy model)."""
    ),
    new_code_cell(
        """len_keys = sorted({k for r in NORMAL for rec in r["val"] for k in rec if re.fullmatch(r"val/.+/mean_length", k)})
panels = [("train", "response_length")] + [("val", k) for k in len_keys]
fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
for ax, (kind, key) in zip(axes[0], panels):
    has = plot_modes(ax, key, "fig 3", kind=kind)
    finish(ax, "step", "tokens", "training rollouts" if kind == "train" else f"validation ({key.split('/')[1]})", has)
fig.tight_layout()
save(fig, "length")"""
    ),
    new_markdown_cell(
        """## 4. Distance from the base model and the base model's likelihood of the samples

`kl_to_base`: the KL divergence of the policy from the base model per response, estimated on
the policy's own samples as the mean of $\\log \\pi(y) - \\log \\pi_\\text{ref}(y)$ (noisy; it can dip
below 0). `reward/ref_logp_sum`: $\\log \\pi_\\text{ref}(y)$ of the rollouts, the quantity the
sharpening rewards push up; the third panel divides it by the length (per-token log-likelihood),
separating "more likely tokens" from "fewer tokens"."""
    ),
    new_code_cell(
        """def per_token(run):
    steps_l, length = series(run, "reward/length")
    if not len(steps_l):
        steps_l, length = series(run, "response_length")
    steps_r, ref = series(run, "reward/ref_logp_sum")
    common = {s: v for s, v in zip(steps_l, length) if v > 0}
    return {"train": [{"step": s, "ref_logp_per_token": r / common[s]} for s, r in zip(steps_r, ref) if s in common],
            "val": [], "mode": run["mode"], "seed": run["seed"]}


derived = [per_token(r) for r in NORMAL]
panels = [("kl_to_base", "KL(policy || base)", "KL to the base model", NORMAL),
          ("reward/ref_logp_sum", "log pi_ref(y)", "base log-likelihood of the samples", NORMAL),
          ("ref_logp_per_token", "log pi_ref(y) / |y|", "... per token", derived)]
fig, axes = plt.subplots(1, 3, figsize=(17, 4))
for ax, (key, ylabel, title, runs) in zip(axes, panels):
    has = plot_modes(ax, key, "fig 4", runs=runs)
    finish(ax, "step", ylabel, title, has)
fig.tight_layout()
save(fig, "kl_loglik")"""
    ),
    new_markdown_cell(
        """## 5. The sharpening instability

The paper's argument against sequence-likelihood rewards: as they shorten responses, the reward's
spread within a group, hence the advantages and the gradient, changes with length ($L_\\text{ref}$
is a sum over tokens, so its scale tracks the length). Each point is one training step of one
run, at its mean rollout length; lines join the steps of a run (light to dark as training goes
on). The task reward's advantages are bounded by 1 whatever the length."""
    ),
    new_code_cell(
        """fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for ax, key, ylabel in zip(axes, ("advantage_std", "grad_norm"), ("advantage std", "gradient norm (before clipping)")):
    plotted, absent = False, set()
    for run in sorted(NORMAL, key=lambda r: (MODES.index(r["mode"]), r["seed"])):
        s_len, length = series(run, "response_length")
        s_y, y = series(run, key)
        common = sorted(set(s_len) & set(s_y))
        if not common:
            absent.add(run["mode"])
            continue
        x = np.array([dict(zip(s_len, length))[s] for s in common])
        v = np.array([dict(zip(s_y, y))[s] for s in common])
        color = COLORS[run["mode"]]
        first = not any(line.get_label() == run["mode"] for line in ax.get_lines())
        ax.plot(x, v, "-", color=color, lw=0.6, alpha=0.5, label=run["mode"] if first else None)
        ax.scatter(x, v, s=12, color=color, alpha=np.linspace(0.25, 1.0, len(x)), edgecolors="none")
        plotted = True
    if absent:
        missing("fig 5", f"'{key}' or 'response_length' in the train records of {', '.join(sorted(absent))}")
    finish(ax, "mean response length (tokens)", ylabel, f"{ylabel} vs length, every step", plotted)
fig.tight_layout()
save(fig, "instability")"""
    ),
    new_markdown_cell(
        """## 6. Normal vs fixed-length runs

The paper's control for the length effect: runs with `rollout.ignore_eos = true` generate the
maximum number of tokens every time, so a likelihood reward cannot shorten responses. Each
fixed-length run (config.json) is compared with the normal runs of the same reward configuration
(`config.reward`): solid normal, dashed fixed-length."""
    ),
    new_code_cell(
        """def reward_key(run):
    return json.dumps(run["config"].get("reward", {}), sort_keys=True)


if not FIXED:
    display(Markdown(f"**No fixed-length runs found** under `{run_root}` (no config.json with "
                     "`rollout.ignore_eos: true`), so there is no normal vs fixed-length comparison to draw."))
else:
    pairs = []  # (label, normal runs, fixed runs)
    for key in sorted({reward_key(r) for r in FIXED}):
        fixed = [r for r in FIXED if reward_key(r) == key]
        normal = [r for r in NORMAL if reward_key(r) == key]
        if not normal:
            missing("fig 6", f"a normal run with the reward of the fixed-length run {fixed[0]['mode']} ({key})")
        pairs.append((normal, fixed))
    val_key = next((k for k in ("val/arithmetic/pass@1",) + tuple(val_keys)
                    if any(k in rec for r in FIXED for rec in r["val"])), None)
    panels = [(val_key, "val", "validation pass@1")] if val_key else []
    panels += [("reward/ref_logp_sum", "train", "base log-likelihood"), ("kl_to_base", "train", "KL to base"),
               ("response_length", "train", "response length")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4), squeeze=False)
    for ax, (key, kind, title) in zip(axes[0], panels):
        has = False
        for i, (normal, fixed) in enumerate(pairs):
            color = plt.cm.tab10(i % 10)
            for runs, ls, suffix in ((normal, "-", ""), (fixed, "--", " (fixed length)")):
                stats = seed_stats(runs, key, kind, ignore_nan=True)
                if stats is None:
                    continue
                ax.plot(stats[0], stats[1], ls, color=color, label=runs[0]["mode"] + suffix,
                        marker="x" if ls == "--" else None, ms=4)
                if len(runs) > 1:
                    ax.fill_between(stats[0], stats[2], stats[3], color=color, alpha=0.12, lw=0)
                has = True
        finish(ax, "step", key, title, has, accuracy=key == val_key)
    fig.tight_layout()
    save(fig, "fixed_length")
    print(f"{len(FIXED)} fixed-length run(s): {', '.join(r['name'] for r in FIXED)}")"""
    ),
    new_markdown_cell(
        """## Results table

results.md as written by the reproduction: the held-out evaluation of the base model and of each
mode's last checkpoint (mean ± std over seeds when there are several), with the KL to the base
model and the base log-likelihood of the last training steps."""
    ),
    new_code_cell(
        """results_md = RUNS_DIR / "results.md"
if results_md.is_file():
    table = results_md.read_text()
    print(table)
    display(Markdown(table))
else:
    missing("table", f"{results_md}")
if RESULTS is not None:
    settings = RESULTS.get("settings", {})
    print(f"settings: {settings}; elapsed {RESULTS.get('elapsed_s', float('nan')):.0f} s")"""
    ),
    new_code_cell(
        """if MISSING:
    print(f"{len(MISSING)} missing item(s); the figures above show what was there:")
    for where, what in MISSING:
        print(f"  [{where}] {what}")
else:
    print("nothing missing")
print("figures:", ", ".join(sorted(p.name for p in FIG_DIR.glob("training_curves_*.png"))))"""
    ),
]


def build() -> nbformat.NotebookNode:
    return _build.build(CELLS)


def main():
    _build.main(CELLS, NOTEBOOK, __doc__, default_timeout=600)


if __name__ == "__main__":
    main()
