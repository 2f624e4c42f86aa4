"""What the verifier mode changes: "boxed" (ours) vs "math_verify" (the paper's reward).

On the shared benchmark files (MATH-500, Minerva-Math, AIME 2024/2025, HMMT Feb 2025), per
mode, counts of verdicts that have a known right answer:

* solutions verify: each reference solution against its own answer (should all be 1).
* shuffled accepted: each solution against another problem's answer (a random cycle, seed 0;
  pairs whose answers are the same string up to spacing are skipped, as in
  tests/rewards/test_math.py) (should all be 0).
* other answer boxed: "... the answer is $\\boxed{<another problem's answer>}$." against
  the reference (should be 0).
* wrong box in solution: the reference solution with the content of its last box replaced by
  another problem's answer (should be 0; solutions without a braced box are left out).
* own answer boxed / unboxed: "... the answer is $\\boxed{<reference>}$." and "... the
  answer is <reference>." (should be 1; the unboxed form shows the extraction difference).

    python benchmarks/verifier_modes.py [--data_dir DIR] [--workers 2] [--json OUT]

CPU only; about a minute per mode on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import numpy as np

from sharpjax.rewards import VERIFIERS, VerifierPool
from sharpjax.rewards.math import _BOX_RE, _match_braces

BENCHMARKS = ("math500", "minerva_math", "aime24", "aime25", "hmmt_feb25")
COLUMNS = (
    ("solutions verify", "pos"),
    ("shuffled accepted", "shuffled"),
    ("other answer boxed accepted", "other_boxed"),
    ("wrong box in solution accepted", "wrong_box"),
    ("own answer boxed", "own_boxed"),
    ("own answer unboxed", "own_unboxed"),
)


def _same_string(a: str, b: str) -> bool:
    """Same text up to spacing/sizing commands (as tests/rewards/test_math.py)."""

    def norm(s: str) -> str:
        s = re.sub(r"\\(?:left|right)(?![A-Za-z])|\\[,;:! ]|\s+|\$", "", s)
        return s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")

    return norm(a) == norm(b)


def _cycle(n: int, seed: int = 0) -> list[tuple[int, int]]:
    """(item, other item) pairs: a random cycle, no item meets itself (as the tests)."""
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return [(perm[k], perm[(k + 1) % n]) for k in range(n)]


def _replace_last_box(solution: str, new: str) -> str | None:
    """The solution with the content of its last complete braced box replaced by `new`."""
    for m in reversed(list(_BOX_RE.finditer(solution))):
        i = m.end()
        while i < len(solution) and solution[i] == " ":
            i += 1
        if i < len(solution) and solution[i] == "{":
            end = _match_braces(solution, i)
            if end is not None:
                return solution[: i + 1] + new + solution[end - 1 :]
    return None


def _items(rows: list[dict]) -> dict[str, tuple[list[str], list[str]]]:
    """Per column: (responses, references)."""
    answers = [r["answer"] for r in rows]
    pairs = [(i, j) for i, j in _cycle(len(rows)) if not _same_string(answers[i], answers[j])]
    out: dict[str, tuple[list[str], list[str]]] = {}
    with_sol = [k for k, r in enumerate(rows) if r.get("solution")]
    if with_sol:
        out["pos"] = ([rows[k]["solution"] for k in with_sol], [answers[k] for k in with_sol])
        sol_set = set(with_sol)
        sp = [(with_sol[i], with_sol[j]) for i, j in _cycle(len(with_sol))]  # The tests' pairs.
        sp = [(i, j) for i, j in sp if not _same_string(answers[i], answers[j])]
        out["shuffled"] = ([rows[i]["solution"] for i, _ in sp], [answers[j] for _, j in sp])
        wrong = [(_replace_last_box(rows[i]["solution"], answers[j]), answers[i]) for i, j in pairs if i in sol_set]
        wrong = [(s, a) for s, a in wrong if s is not None]
        out["wrong_box"] = ([s for s, _ in wrong], [a for _, a in wrong])
    lead = "Let me work through it step by step. "
    out["other_boxed"] = (
        [f"{lead}So the answer is $\\boxed{{{answers[j]}}}$." for _, j in pairs],
        [answers[i] for i, _ in pairs],
    )
    out["own_boxed"] = ([f"{lead}So the answer is $\\boxed{{{a}}}$." for a in answers], answers)
    out["own_unboxed"] = ([f"{lead}So the answer is {a}." for a in answers], answers)
    return out


def sci_notation(pool: VerifierPool, data_dir: str, timeout_s: float) -> dict[str, list[int]]:
    """Minerva-Math's code-style references (`3.83e35`) against a LaTeX answer: the right one
    (`3.83 \\times 10^{35}`) and one with the exponent off by one. Per mode, accepted/total."""
    with open(os.path.join(data_dir, "minerva_math.jsonl")) as f:
        refs = [json.loads(line)["answer"] for line in f if line.strip()]
    sci = [m for r in refs if (m := re.fullmatch(r"(-?[\d.]+)e([-+]?\d+)", r))]
    right = [f"So the answer is $\\boxed{{{m[1]} \\times 10^{{{int(m[2])}}}}}$." for m in sci]
    wrong = [f"So the answer is $\\boxed{{{m[1]} \\times 10^{{{int(m[2]) + 1}}}}}$." for m in sci]
    out = {}
    for verifier in VERIFIERS:
        for key, responses in (("right", right), ("wrong", wrong)):
            res = pool.verify_batch(responses, [m[0] for m in sci], timeout_s=timeout_s, verifier=verifier)
            out[f"{verifier}/{key}"] = [int(sum(r.score for r in res)), len(res)]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_dir = os.environ.get("SHARPJAX_DATA_DIR") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"
    )
    p.add_argument("--data_dir", default=default_dir)
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per item")
    p.add_argument("--json", default=None, help="also write the counts here")
    args = p.parse_args(argv)

    results: dict = {}
    with VerifierPool(args.workers) as pool:
        pool.verify_batch(["\\boxed{1}"], ["1"])  # Start-up is not timed.
        for name in args.benchmarks.split(","):
            path = os.path.join(args.data_dir, f"{name}.jsonl")
            with open(path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            items = _items(rows)
            for verifier in VERIFIERS:
                t0 = time.perf_counter()
                counts = {}
                for key, (responses, refs) in items.items():
                    res = pool.verify_batch(responses, refs, timeout_s=args.timeout, verifier=verifier)
                    counts[key] = [int(sum(r.score for r in res)), len(res)]
                    counts[key + "_timeouts"] = sum(r.reason.value == "timeout" for r in res)
                counts["seconds"] = round(time.perf_counter() - t0, 1)
                results[f"{name}/{verifier}"] = counts
                print(f"{name} {verifier}: {counts}", file=sys.stderr, flush=True)

        if "minerva_math" in args.benchmarks.split(","):
            results["minerva_sci_latex"] = sci_notation(pool, args.data_dir, args.timeout)

    header = "| benchmark | verifier | " + " | ".join(c for c, _ in COLUMNS) + " |"
    print(header)
    print("|" + "---|" * (len(COLUMNS) + 2))
    for key, counts in results.items():
        if "/" not in key:
            continue
        name, verifier = key.split("/")
        cells = [f"{counts[k][0]}/{counts[k][1]}" if k in counts else "-" for _, k in COLUMNS]
        print(f"| {name} | {verifier} | " + " | ".join(cells) + " |")
    sci = results.get("minerva_sci_latex")
    if sci:
        print("\n| Minerva-Math code-style reference (`3.83e35`), answer in LaTeX | boxed | math_verify |")
        print("|---|---|---|")
        for key, label in (("right", "right (`3.83 \\times 10^{35}`) accepted"), ("wrong", "exponent off by one accepted")):
            print(f"| {label} | " + " | ".join(f"{sci[f'{v}/{key}'][0]}/{sci[f'{v}/{key}'][1]}" for v in VERIFIERS) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
