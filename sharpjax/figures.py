"""The main job's figures, written as PNGs next to results.md (`write_figures`).

From the logs the main job leaves in its workdir (results.json and runs/<mode>_seed<k>/{metrics.jsonl,
config.json}), the same logs notebooks/training_curves.ipynb reads:

    figures_accuracy.png      validation pass@1 and rollout accuracy (reward/task) vs step, per mode
    figures_length.png        response length of the training rollouts vs step, per mode
    figures_pass_at_k.png     pass@k and maj@k vs k on the held-out problems: base model and each mode
    figures_fixed_length.png  normal vs fixed-length (ignore-EOS) runs of the same reward (when there are any)

Curves are the mean over seeds, with a min-max band when there are several. matplotlib's Agg
backend: no display needed. A missing metric leaves its panel marked "no data" instead of failing:
a figure must never cost the results of a finished job. notebooks/training_curves.ipynb draws with
the same pieces (`series`, `seed_stats`, `plot_modes`, `plot_pass_at_k`, `finish`, `metric_curve`).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "FIGURES",
    "RUN_NAME",
    "finish",
    "load_runs",
    "metric_curve",
    "plot_modes",
    "plot_pass_at_k",
    "seed_stats",
    "series",
    "write_figures",
]

FIGURES = ("accuracy", "length", "pass_at_k", "fixed_length")
RUN_NAME = re.compile(r"^(?P<mode>.+)_seed(?P<seed>\d+)$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display; a notebook's inline backend is kept
    import matplotlib.pyplot as plt

    return plt


def load_runs(workdir: str) -> list[dict[str, Any]]:
    """Every run under workdir/runs with a metrics.jsonl: name, mode, seed, config, train and val records."""
    from sharpjax.train.metrics import read_metrics

    root = os.path.join(workdir, "runs")
    runs = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        run_dir = os.path.join(root, name)
        if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
            continue
        match = RUN_NAME.match(name)
        config = {}
        try:
            with open(os.path.join(run_dir, "config.json")) as f:
                config = json.load(f)
        except (OSError, ValueError):
            pass
        records = read_metrics(run_dir)
        is_val = [any(k.startswith("val/") for k in r) for r in records]
        runs.append({
            "name": name,
            "mode": match["mode"] if match else name,
            "seed": int(match["seed"]) if match else 0,
            "config": config,
            "ignore_eos": bool((config.get("rollout") or {}).get("ignore_eos", False)),
            "train": [r for r, v in zip(records, is_val) if not v],
            "val": [r for r, v in zip(records, is_val) if v],
        })
    return runs


def series(run: dict, key: str, kind: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the `kind` records ("train" or "val") of one run that have `key`, by step.

    A repeated step keeps its last record (a resumed run logs the steps after its checkpoint again).
    """
    by_step = {r["step"]: float(r[key]) for r in run[kind] if isinstance(r.get(key), (int, float)) and "step" in r}
    steps = sorted(by_step)
    return np.array(steps, dtype=float), np.array([by_step[s] for s in steps], dtype=float)


def seed_stats(runs: Sequence[dict], key: str, kind: str = "train", *, ignore_nan: bool = False):
    """(steps, mean, min, max) per step over the runs (seeds) that logged `key`; None when none did.

    `ignore_nan`: a seed's NaN is left out of its step's statistics (an all-NaN step stays NaN, quietly)
    instead of making the step NaN.
    """
    per_run = [dict(zip(*series(r, key, kind))) for r in runs]
    steps = sorted(set().union(*per_run)) if per_run else []
    if not steps:
        return None
    values = [np.array([d[s] for d in per_run if s in d]) for s in steps]
    mean, lo, hi = (np.nanmean, np.nanmin, np.nanmax) if ignore_nan else (np.mean, np.min, np.max)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.array(steps), np.array([mean(v) for v in values]), np.array([lo(v) for v in values]),
                np.array([hi(v) for v in values]))


def finish(ax, xlabel: str, ylabel: str, title: str, has_data: bool, *, accuracy: bool = False) -> None:
    """Labels, integer steps, the legend, or "no data"; `accuracy`: a fraction's y-axis, from 0 (up to 1)."""
    from matplotlib.ticker import MaxNLocator

    if xlabel == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if accuracy and has_data:  # no autoscaled axis around a flat 0
        ax.set_ylim(-0.02, min(1.02, max(0.1, 1.1 * ax.get_ylim()[1])))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if not has_data:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def plot_modes(ax, runs, modes, colors, key, kind="train", *, ls="-", suffix="", ignore_nan=False) -> list[str]:
    """Per mode, the mean over its seeds of `key` vs step, with a min-max band; returns the modes drawn."""
    drawn = []
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        stats = seed_stats(mine, key, kind, ignore_nan=ignore_nan)
        if stats is None:
            continue
        steps, mean, lo, hi = stats
        ax.plot(steps, mean, ls, color=colors[mode], marker="o" if len(steps) < 15 else None, ms=3,
                label=mode + suffix + (f" ({len(mine)} seeds)" if len(mine) > 1 else ""))
        if len(mine) > 1:
            ax.fill_between(steps, lo, hi, color=colors[mode], alpha=0.15, lw=0)
        drawn.append(mode)
    return drawn


def plot_pass_at_k(ax, results: dict, modes, colors, prefix: str, *, best_alpha: float = 1.0) -> list[tuple[str, str]]:
    """`prefix`@k vs k (log2 axis) from results.json: the base model, each mode's last (solid) and best
    (dashed) checkpoint, each the mean over seeds. Returns the curves drawn: ("base", "base"), (mode, "last"), ...
    """
    drawn = []
    ks, vals = metric_curve([results["base"]], prefix) if results.get("base") else ((), ())
    if len(ks):
        ax.plot(ks, vals, "k-o", lw=2.2, ms=4, label="base")
        drawn.append(("base", "base"))
    for mode in modes:
        rows = [row for name, row in (results.get("runs") or {}).items()
                if RUN_NAME.match(name) and RUN_NAME.match(name)["mode"] == mode]
        for which, ls in (("last", "-"), ("best", "--")):
            evals = [row[which] for row in rows if isinstance(row.get(which), dict)]
            ks, vals = metric_curve(evals, prefix) if evals else ((), ())
            if len(ks):
                ax.plot(ks, vals, ls, marker="o", ms=3, color=colors.get(mode, "gray"), label=f"{mode} ({which})",
                        **({"alpha": best_alpha} if which == "best" and best_alpha != 1.0 else {}))
                drawn.append((mode, which))
    if drawn:
        all_ks = sorted({int(x) for line in ax.get_lines() for x in line.get_xdata()})
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_ks, [str(k) for k in all_ks])
        ax.minorticks_off()
    return drawn


def metric_curve(evals: Sequence[dict], prefix: str):
    """(ks, mean over `evals`) of `prefix`@k for the ks every evaluation has (the notebook uses it too)."""
    ks = None
    for e in evals:
        found = {int(k.split("@")[1]) for k in e if k.startswith(prefix + "@") and k.split("@")[1].isdigit()}
        ks = found if ks is None else ks & found
    ks = sorted(ks or [])
    return np.array(ks), np.array([np.mean([e[f"{prefix}@{k}"] for e in evals]) for k in ks])


def write_figures(workdir: str, results: dict | None = None) -> list[str]:
    """Writes workdir/figures_<name>.png for each name of FIGURES that has runs to show; returns their paths.

    Args:
      workdir: the main job's workdir (results.json, runs/).
      results: the main job's results (default: workdir/results.json; without it no pass@k figure).
    """
    plt = _pyplot()
    if results is None and os.path.isfile(os.path.join(workdir, "results.json")):
        with open(os.path.join(workdir, "results.json")) as f:
            results = json.load(f)
    runs = load_runs(workdir)
    order = [m.replace(":", "-") for m in ((results or {}).get("settings") or {}).get("modes", [])]
    modes = [m for m in order if any(r["mode"] == m for r in runs)]
    modes += sorted({r["mode"] for r in runs} - set(modes))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(modes)}
    normal = [r for r in runs if not r["ignore_eos"]]
    fixed = [r for r in runs if r["ignore_eos"]]
    paths = []

    def save(fig, name):
        path = os.path.join(workdir, f"figures_{name}.png")
        fig.tight_layout()
        fig.savefig(path + ".tmp", dpi=110, format="png")  # atomic: a reader never sees half a PNG
        os.replace(path + ".tmp", path)
        plt.close(fig)
        paths.append(path)

    if normal:
        val_keys = sorted({k for r in normal for rec in r["val"] for k in rec if re.fullmatch(r"val/.+/pass@1", k)})
        panels = [(k, "val", f"validation pass@1 ({k.split('/')[1]})") for k in val_keys]
        panels.append(("reward/task", "train", "rollout accuracy (reward/task)"))
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
        for ax, (key, kind, title) in zip(axes[0], panels):
            finish(ax, "step", key, title, bool(plot_modes(ax, normal, modes, colors, key, kind)))
        save(fig, "accuracy")

        fig, ax = plt.subplots(figsize=(6, 3.8))
        has = bool(plot_modes(ax, normal, modes, colors, "response_length", "train"))
        finish(ax, "step", "tokens", "response length of the training rollouts", has)
        save(fig, "length")

    if results and results.get("base"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for ax, prefix in zip(axes, ("pass", "maj")):
            has = bool(plot_pass_at_k(ax, results, modes, colors, prefix))
            finish(ax, "k (samples per problem)", f"{prefix}@k", f"{prefix}@k, held-out problems", has)
        save(fig, "pass_at_k")

    if fixed:
        def reward_of(run):
            return json.dumps(run["config"].get("reward", {}), sort_keys=True)

        panels = (("val/arithmetic/pass@1", "val", "validation pass@1"),
                  ("response_length", "train", "response length"),
                  ("reward/ref_logp_sum", "train", "base log-likelihood"), ("kl_to_base", "train", "KL to base"))
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
        for ax, (key, kind, title) in zip(axes[0], panels):
            has = False
            for i, reward in enumerate(sorted({reward_of(r) for r in fixed})):
                for group, ls, suffix in (([r for r in normal if reward_of(r) == reward], "-", ""),
                                          ([r for r in fixed if reward_of(r) == reward], "--", " (fixed length)")):
                    stats = seed_stats(group, key, kind)
                    if stats is not None:
                        ax.plot(stats[0], stats[1], ls, color=plt.cm.tab10(i % 10), label=group[0]["mode"] + suffix)
                        has = True
            finish(ax, "step", key, title, has)
        save(fig, "fixed_length")
    return paths
