"""The diagnosis's outputs: the numeric summary sentences, report.md, report.json and the figures.

`compare` turns one benchmark's evaluations (base, policy, baselines) into the measured components;
`summary_lines` states each with its numbers and which way it points (sharpening, beyond it, or
neither), never a single score; `write_report` writes report.json, report.md and the PNGs (matplotlib
Agg, the style of `sharpjax.figures`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sharpjax.diagnose import metrics

__all__ = ["SHARPENING", "BEYOND", "NEITHER", "compare", "summary_lines", "write_report"]

SHARPENING, BEYOND, NEITHER = "sharpening", "beyond sharpening", "neither"
_HEADLINE_KS = (1, 4, 16, 64)


def compare(base: Mapping[str, Any], policy: Mapping[str, Any], *, num_boot: int, seed: int) -> dict[str, Any]:
    """The measured components for one policy on one benchmark.

    Args:
      base, policy: {"ks", "pass", "maj_ks", "maj" (the curves), "records" ([ProblemRecord]), "logp" ([B, n]
        the base's log-likelihood of each response), "lengths" ([B, n])}: the policy's responses scored by
        the base, on the same problems in the same order.
      num_boot, seed: the coverage bootstrap.
    """
    return {
        "pass_crossings": metrics.crossings(base["ks"], base["pass"], policy["pass"]),
        "maj_crossings": metrics.crossings(base["maj_ks"], base["maj"], policy["maj"]),
        "coverage": metrics.coverage(base["records"], policy["records"], num_boot=num_boot, seed=seed),
        "majority": metrics.majority_agreement(base["records"], policy["records"]),
        "likelihood": metrics.likelihood_shift(base["logp"], base["lengths"], policy["logp"], policy["lengths"]),
    }


def _direction(cond_sharpening: bool, cond_beyond: bool) -> str:
    return SHARPENING if cond_sharpening else BEYOND if cond_beyond else NEITHER


def summary_lines(bench: Mapping[str, Any], policy: str) -> list[tuple[str, str, str]]:
    """(component, direction, sentence) for each measured component of `policy` on one benchmark.

    Args:
      bench: a benchmark's entry of report.json: "n" and "ks" (of the base and the policies), "models" and
        "baselines" {name: {"n", "ks", "maj_ks", "pass", "maj", "summary", "cost_ratio"}}, "policies" {name:
        `compare`'s output}.
      policy: which policy.

    Directions (each from its own numbers, no weighting between them):
      pass@k: SHARPENING when the base overtakes the policy at some k after the policy was above it (the
        coverage the policy gave up for precision), BEYOND when the policy is above at some k and below at none.
      coverage: SHARPENING when the 95% bootstrap interval of (policy-only - base-only) solved problems is
        below 0, BEYOND when above 0.
      majority: on problems whose base majority is wrong, SHARPENING when the policy keeps that wrong answer
        on most of them, BEYOND when it moves to the right answer on most of them.
      likelihood: SHARPENING when the policy's responses are likelier per token under the base than the base's
        own samples by more than 2 standard errors, BEYOND when less likely by as much.
      baselines: SHARPENING when a training-free sharpening of the base reaches the policy's pass@1 (within
        0.5 point), BEYOND when the policy's pass@1 is above every one of them.
    """
    n, ks = bench["n"], bench["ks"]
    base, pol = bench["models"]["base"], bench["models"][policy]
    comp = bench["policies"][policy]
    out = []

    cross = comp["pass_crossings"]
    b1, p1, bn, pn = base["pass"][0], pol["pass"][0], base["pass"][ks.index(n)], pol["pass"][ks.index(n)]
    text = f"pass@1 {b1:.3f} -> {p1:.3f} ({100 * (p1 - b1):+.1f} points), pass@{n} {bn:.3f} -> {pn:.3f}: "
    if cross["base_overtakes_at"] is not None:
        text += f"the base overtakes the policy at k = {cross['base_overtakes_at']}"
    elif cross["policy_above"] and not cross["base_above"]:
        text += f"the policy is at or above the base at every k = 1..{n}"
    elif cross["base_above"] and not cross["policy_above"]:
        text += f"the base is at or above the policy at every k = 1..{n}"
    else:
        text += f"the curves cross at k = {', '.join(map(str, cross['crossings'])) or 'none'}"
    out.append(("pass@k", _direction(cross["base_overtakes_at"] is not None,
                                     bool(cross["policy_above"]) and not cross["base_above"]), text + "."))

    cov = comp["coverage"]
    lo, hi = cov["net_interval"]
    text = (f"the policy solves {cov['policy_only']} problems the base never solves in {n} samples "
            f"(95% bootstrap interval {_iv(cov['policy_only_interval'])}), the base {cov['base_only']} that the "
            f"policy never does ({_iv(cov['base_only_interval'])}): net {cov['net']:+d} ({_iv(cov['net_interval'])}) "
            f"of {cov['num_problems']}.")
    out.append(("coverage", _direction(hi < 0, lo > 0), text))

    maj = comp["majority"]
    kept, right, other = maj["agree_wrong"], maj["left_wrong_to_right"], maj["left_wrong_to_wrong"]
    text = (f"on the {_num(maj['base_wrong'])} problems whose base majority answer is wrong, the policy's majority "
            f"keeps it on {_num(kept)}, leaves it for the right answer on {_num(right)} and for another wrong one on "
            f"{_num(other)}; it keeps {_num(maj['agree_right'])} of the {_num(maj['base_right'])} right base "
            "majorities.")
    out.append(("majority", _direction(kept > right + other, right > kept + other), text))

    lik = comp["likelihood"]
    tok, resp, length = lik["per_token"], lik["per_response"], lik["length"]
    text = (f"the base's log-likelihood per token of the policy's responses {tok['policy']:.3f} vs {tok['base']:.3f} "
            f"of its own samples (shift {tok['shift']:+.3f} ± {tok['shift_se']:.3f}), per response "
            f"{resp['policy']:.2f} vs {resp['base']:.2f}; length {length['base']:.1f} -> {length['policy']:.1f} "
            f"tokens ({length['shift']:+.1f} ± {length['shift_se']:.1f}).")
    se = tok["shift_se"] if np.isfinite(tok["shift_se"]) else 0.0
    out.append(("likelihood", _direction(tok["shift"] > 2 * se, tok["shift"] < -2 * se), text))

    baselines = bench.get("baselines") or {}
    if baselines:
        parts = []
        for name, b in baselines.items():
            k = b["n"]
            pk = f", pass@{k} {b['pass'][-1]:.3f} (policy {pol['pass'][ks.index(k)]:.3f})" if k in ks else ""
            parts.append(f"{name}: pass@1 {b['pass'][0]:.3f}{pk} at {b['cost_ratio']:.1f}x the tokens of plain "
                         "sampling")
        best = max(b["pass"][0] for b in baselines.values())
        text = f"training-free sharpening of the base, {'; '.join(parts)}; the policy's pass@1 {p1:.3f}."
        out.append(("baselines", _direction(best >= p1 - 0.005, p1 > best + 0.005), text))
    return out


def _iv(interval: Sequence[float]) -> str:
    return f"[{_num(interval[0])}, {_num(interval[1])}]"


def _num(x: float) -> str:
    """A count that may be an expectation over tie-breaking: an integer when it is one."""
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def summary_paragraph(lines: Sequence[tuple[str, str, str]]) -> str:
    """The components' sentences, then which point to sharpening and which beyond it."""
    by = {d: [c for c, dd, _ in lines if dd == d] for d in (SHARPENING, BEYOND, NEITHER)}
    text = " ".join(f"**{c}** ({d}): {s}" for c, d, s in lines)
    return (text + f" Pointing to sharpening: {', '.join(by[SHARPENING]) or 'none'}; beyond sharpening: "
            f"{', '.join(by[BEYOND]) or 'none'}; neither: {', '.join(by[NEITHER]) or 'none'}.")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _markdown(report: Mapping[str, Any]) -> str:
    s = report["settings"]
    lines = ["# Sharpening diagnosis", "",
             f"base `{report['base']}`; " + "; ".join(f"{k} `{v}`" for k, v in report["policies"].items()) + ".  ",
             f"{s['n']} samples per problem at T = {s['temperature']}, {s['max_new_tokens']}-token budget, task "
             f"{s['task']}, seed {s['seed']}; baselines {s['baseline_n']} samples (alpha {s['alpha']}). "
             f"Wall time {report['seconds']:.0f} s.", ""]
    for name, bench in report["benchmarks"].items():
        n = bench["n"]
        shown = [k for k in _HEADLINE_KS if k < n] + [n]
        lines += [f"## {name} ({bench['num_problems']} problems)", ""]
        head = ["model", "samples"] + [f"pass@{k}" for k in shown] + [f"maj@{k}" for k in shown]
        head += ["mean length", "tokens / problem", "cost vs plain"]
        lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for model, v in [*bench["models"].items(), *(("base, " + m, v) for m, v in bench["baselines"].items())]:
            cells = [_pct(v["pass"][v["ks"].index(k)]) if k in v["ks"] else "" for k in shown]
            cells += [_pct(v["maj"][v["maj_ks"].index(k)]) if k in v["maj_ks"] else "" for k in shown]
            summ = v["summary"]
            cells += [f"{summ['mean_length']:.1f}", f"{summ['token_cost_per_problem']:.0f}", f"{v['cost_ratio']:.2f}"]
            lines.append(f"| {model} | {v['n']} | " + " | ".join(cells) + " |")
        lines += ["", "Accuracies in percent; pass@k unbiased from the samples, maj@k exact (ties split).", ""]
        for policy, comp in bench["policies"].items():
            lines += [f"### {policy} vs base", "", summary_paragraph(summary_lines(bench, policy)), ""]
            lik = comp["likelihood"]
            lines += ["| base log-likelihood of ... | base's own samples | policy's responses | shift (± se) |",
                      "|---|---:|---:|---:|"]
            for key, label, fmt in (("per_token", "per token", ".3f"), ("per_response", "per response", ".2f"),
                                    ("length", "(length, tokens)", ".1f")):
                q = lik[key]
                lines.append(f"| {label} | {q['base']:{fmt}} | {q['policy']:{fmt}} | {q['shift']:+{fmt}} "
                             f"(± {q['shift_se']:{fmt}}) |")
            left = sorted(comp["majority"]["left_wrong"], key=lambda r: -r["weight"])
            if left:
                lines += ["", f"Problems where the policy left a wrong base majority ({len(left)}; first 20):", "",
                          "| problem | reference | base majority (share) | policy majority (share) |",
                          "|---|---|---|---|"]
                for r in left[:20]:
                    lines.append(f"| {r['id']} | {r['reference']} | {', '.join(map(str, r['base_majority']))} "
                                 f"({r['base_share']:.2f}) | {', '.join(map(str, r['policy_majority']))} "
                                 f"({r['policy_share']:.2f}) |")
            lines.append("")
        lines += [f"Figures: `{f}`" for f in bench.get("figures", [])] + [""]
    return "\n".join(lines)


def _figures(out_dir: str, name: str, bench: Mapping[str, Any]) -> list[str]:
    from sharpjax.figures import _pyplot, finish

    plt = _pyplot()
    paths = []
    models = list(bench["models"])
    colors = {m: ("k" if m == "base" else plt.cm.tab10(i % 10)) for i, m in enumerate(models)}

    def save(fig, suffix):
        path = os.path.join(out_dir, f"{name}_{suffix}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110, format="png")
        plt.close(fig)
        paths.append(os.path.basename(path))

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, ks_key in ((axes[0], "pass", "ks"), (axes[1], "maj", "maj_ks")):
        for m in models:
            v = bench["models"][m]
            ax.plot(v[ks_key], v[key], "-", color=colors[m], lw=2.2 if m == "base" else 1.6, label=m)
        for j, (b, v) in enumerate(bench["baselines"].items()):
            ax.plot(v[ks_key], v[key], ":", marker="o", ms=2.5, color=plt.cm.Set2(j), label=f"base, {b}")
        ax.set_xscale("log", base=2)
        finish(ax, "k (samples per problem)", f"{key}@k", f"{key}@k, {name}", True)
    save(fig, "pass_at_k")

    policies = list(bench["policies"])
    panels = (("per_token", "base log-likelihood per token"), ("per_response", "base log-likelihood per response"),
              ("length", "response length (tokens)"))
    fig, axes = plt.subplots(len(policies), 3, figsize=(14, 3.4 * len(policies)), squeeze=False)
    for row, policy in zip(axes, policies):
        for ax, (key, title) in zip(row, panels):
            h = bench["policies"][policy]["likelihood"]["histograms"][key]
            edges = np.asarray(h["edges"])
            for label, counts, color in (("base's own samples", h["base"], "k"), (policy, h["policy"], colors[policy])):
                density = np.asarray(counts, float) / max(1, sum(counts))
                ax.stairs(density, edges, color=color, lw=1.6, label=label)
            finish(ax, title, "share of responses", f"{title}: {policy} vs base", True)
    save(fig, "likelihood")
    return paths


def write_report(out_dir: str, report: dict[str, Any]) -> list[str]:
    """Writes the figures, report.json and report.md into `out_dir`; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    for name, bench in report["benchmarks"].items():
        bench["figures"] = _figures(out_dir, name, bench)
        for policy in bench["policies"]:
            lines = summary_lines(bench, policy)
            bench["policies"][policy]["summary"] = [{"component": c, "direction": d, "text": t} for c, d, t in lines]
    paths = [os.path.join(out_dir, "report.json"), os.path.join(out_dir, "report.md")]
    with open(paths[0], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(_markdown(report) + "\n")
    return paths + [os.path.join(out_dir, f) for b in report["benchmarks"].values() for f in b["figures"]]
