"""What one RL step's verification costs on the host (issue 28, item 4): 256 responses, the paper's verifier.

The trainer verifies a sampler call's responses on the host while the device works: every call
but the last during the next call's decode, the last one while the device scores the reference
(`Trainer._rollout_and_update`). The update waits only for what is left of the last call's
verification. This script times that host work alone, with the worker pool the trainer uses
(`rewards.verify_batch`, `default_num_workers()` processes), on two kinds of responses:

* `solutions`: MATH-500 reference solutions (a trained model's kind of text, ~200 words, one
  `\\boxed{}` answer), half checked against their own answer and half against another
  problem's (so both verdicts are exercised);
* `random`: runs of random words as long as a response at the budget (what a random-weights
  model writes; the GPU check's paper step sees these).

    python benchmarks/verify_cost.py [--rows 256] [--verifier math_verify] [--json OUT]

Compare the seconds with the device time they overlap: the plan's reference scoring time for
the paper step (`python -m sharpjax.plan --config experiments/rl_math.py:llama3b:task:h200x1`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from sharpjax.data.datasets import resolve_data_dir
from sharpjax.rewards import verify_batch
from sharpjax.rewards.pool import default_num_workers


def responses(kind: str, rows: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`rows` (response, reference) pairs of one kind (see the module docstring)."""
    with open(resolve_data_dir() / "math500.jsonl", encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    rng = np.random.default_rng(seed)
    picked = [items[i] for i in rng.choice(len(items), rows, replace=rows > len(items))]
    answers = [str(p["answer"]) for p in picked]
    if kind == "solutions":
        texts = [p["solution"] for p in picked]
        # Every other row against the next row's answer: about half the verdicts are "wrong".
        refs = [a if i % 2 == 0 else answers[(i + 1) % rows] for i, a in enumerate(answers)]
        return texts, refs
    words = [w for p in items for w in p["solution"].split()]
    # ~1500 words: about the 2048-token budget of the paper's step.
    texts = [" ".join(rng.choice(words, 1500)) for _ in range(rows)]
    return texts, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=256, help="responses per step (the paper: 32 prompts x 8)")
    ap.add_argument("--verifier", default="math_verify", help="math_verify (the paper's) | boxed")
    ap.add_argument("--workers", type=int, default=None, help="verifier processes; default the trainer's")
    ap.add_argument("--repeats", type=int, default=2, help="timed batches per kind (after one warm-up)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    workers = args.workers if args.workers is not None else default_num_workers()
    out = {"rows": args.rows, "verifier": args.verifier, "workers": workers, "cpus": os.cpu_count(),
           "machine": platform.processor() or platform.machine()}
    for kind in ("solutions", "random"):
        texts, refs = responses(kind, args.rows)
        verify_batch(texts[:workers], refs[:workers], verifier=args.verifier, num_workers=workers)  # start the pool
        times, correct = [], 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            results = verify_batch(texts, refs, verifier=args.verifier, num_workers=workers)
            times.append(time.perf_counter() - t0)
            correct = sum(r.score > 0 for r in results)
        best = min(times)
        out[kind] = {"seconds": best, "responses_per_s": args.rows / best, "verified_correct": correct,
                     "mean_chars": float(np.mean([len(t) for t in texts]))}
        print(f"{kind:9s}: {args.rows} responses ({out[kind]['mean_chars']:.0f} chars on average) verified in "
              f"{best:.2f} s with {workers} workers ({args.rows / best:.0f}/s); {correct} correct", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
