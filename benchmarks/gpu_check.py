"""The GPU check as one command (issue 28, item 7): every figure of the speed table in one JSON.

Runs, each stage in its own process with a timeout from one overall budget (default 540 s:
a 15-minute device lease keeps room for the machine's start and a rerun):

0. the GPU-only tests of the compiled Pallas decode kernel (`GPU_TESTS`: against dense
   attention; skipping finished rows bitwise), pytest's counts in the JSON;
1. `benchmarks/rollout.py` with the default decode attention (the Pallas kernel on one GPU)
   and HF `generate` beside it: tok/s, % of the HBM roofline, ratio to HF;
2. `benchmarks/train_step.py` (8 x 1024, remat full) and the PyTorch step: MFU, ratio;
3. two steps of `experiments/rl_math.py:llama3b:task:h200x1` end to end with random weights
   (`config.model_init="random"`: a model directory holding only config.json, a BPE tokenizer
   learned from the training prompts), the launcher's preflight (chunk_prompts and remat
   "auto", planned as the launcher plans: `--plan auto`), then `Trainer.rollout_and_update`:
   rollout / verify / update seconds, sampler calls, compiles, the device's peak memory, the
   plan's predictions (peak and roofline time per program) next to them, and the GEMMs XLA
   rematerialized in the GPU's own compile of the update (`train_step_xla_remat`: 0 means the
   remat policy's compute is the step's);
4. `benchmarks/rollout.py --decode-attention xla` (no HF): the XLA decode attention;
5. `benchmarks/rollout.py --lengths realistic` (no HF): forced realistic response lengths, the
   decode with finished rows skipped and without (what a step saves once rows end early).

It writes `--out` (default benchmarks/results/gpu_check-<date>.json), rewritten after each stage
so that a stage cut by the budget keeps the others, and prints the line BENCHMARKS.md keeps per
check:

    gpu_check <date> <device>: rollout <r>x HF (<p>% roofline), train MFU <m>%, llama3b h200x1 step <s> s,
    peak <g> GiB (plan <g2> GiB)

    python benchmarks/gpu_check.py                    # one GPU, at most ~9 minutes
    python benchmarks/gpu_check.py --tiny             # the same path at toy sizes on the CPU

`--tiny` runs every stage at toy sizes (no HF / PyTorch side: tests/test_benchmarks.py runs
those); its time is mostly XLA's compiles of the tiny programs (about a minute on an idle
2-core CPU, several on a shared one).

Random weights rarely emit EOS: the paper step's responses run near full length (the worst
case the plan assumes), not the lengths of a trained model.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GPU_TESTS = ("tests/rollout/test_decode.py::test_sampler_gpu_kernel_matches_dense",
             "tests/rollout/test_skip_finished.py::test_gpu_kernel_skipping_keeps_every_output_bitwise")
ROOT = os.path.dirname(HERE)
GiB = 2**30


def _stage(name: str, argv: list[str], timeout: float, log: list[str], xla_flags: str = "") -> tuple[int, str]:
    """Runs one stage's process (with `xla_flags` added to XLA_FLAGS); returns (exit code, its
    output). 124: cut by the budget."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    print(f"== {name}: {' '.join(argv)} (timeout {timeout:.0f} s)", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=max(timeout, 1))
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code = 124
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    tail = "\n".join(out.strip().splitlines()[-15:])
    print(tail, flush=True)
    log.append(f"{name}: exit {code} in {time.perf_counter() - t0:.0f} s")
    print(f"== {name}: exit {code} in {time.perf_counter() - t0:.0f} s", flush=True)
    return code, out


def _load(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ---- stage 3: the paper-shaped step (run in its own process: `--stage paper`) -----------

def paper_stage(args) -> None:
    import jax

    sys.path.insert(0, HERE)
    from _shapes import LLAMA3_ROPE, SIZES

    from sharpjax.models import ModelConfig
    from sharpjax.plan import GiB as _GiB
    from sharpjax.plan import parse_target, plan_run, preflight_plan
    from sharpjax.train.config import RunConfig
    from sharpjax.train.trainer import Trainer

    t00 = time.perf_counter()
    rec: dict = {"config": f"experiments/rl_math.py:llama3b:task:{args.target}", "size": args.size,
                 "device": jax.devices()[0].device_kind, "jax": jax.__version__}
    work = args.work
    mdir = os.path.join(work, "model")
    os.makedirs(mdir, exist_ok=True)
    on_gpu = jax.default_backend() == "gpu"
    shape = dict(SIZES[args.size])
    model = ModelConfig(model_type="llama", rope=LLAMA3_ROPE, tie_word_embeddings=True, rms_norm_eps=1e-5,
                        max_position_embeddings=131072, dtype="bfloat16" if on_gpu else "float32",
                        bos_token_id=1, eos_token_ids=(2,), pad_token_id=0, **shape)
    with open(os.path.join(mdir, "config.json"), "w") as f:  # config.json only: random weights, learned BPE
        json.dump(model.to_hf_dict(), f)

    import importlib.util

    spec = importlib.util.spec_from_file_location("rl_math", os.path.join(ROOT, "experiments", "rl_math.py"))
    rl_math = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rl_math)
    c = rl_math.get_config(f"llama3b:task:{args.target}")
    c.model_dir = mdir
    c.model_init = "random"
    c.dtype = model.dtype
    c.plan.method = args.plan
    c.data.validation = ()
    c.eval.at_start = False
    if args.size == "tiny":  # the same code path at a toy shape
        c.rollout.prompts_per_step = 2
        c.rollout.max_total_length = 320
        c.train.micro_batches = 2
    run = RunConfig.from_config_dict(c)
    t0 = time.perf_counter()
    run, summary, plan = preflight_plan(run)
    rec["preflight_s"] = round(time.perf_counter() - t0, 1)
    rec["preflight"] = summary
    print(summary, flush=True)
    chunk = run.rollout.chunk_prompts or run.rollout.prompts_per_step
    k = run.rollout.samples_per_prompt
    rec |= {"remat": run.train.remat, "chunk_prompts": chunk, "sampler_calls": run.rollout.prompts_per_step // chunk,
            "rows_per_call": chunk * k, "rows": run.rollout.prompts_per_step * k,
            "max_total_length": run.rollout.max_total_length}
    # The plan's predictions for the run as resolved (worst case: full-length responses): the
    # preflight's own plan (an AOT plan compiles every program, a minute or more at 3B: once);
    # with --plan off, the analytic one.
    if plan is None:
        plan = plan_run(run, parse_target(args.target), method="analytic")
    rec["plan"] = {
        "method": plan.method, "device_gib": round(plan.memory_bytes / _GiB, 2),
        "peak_gib": round(plan.peak_bytes / _GiB, 2), "step_time_s": round(plan.step_time_s, 2),
        "programs": {p.name: {"peak_gib": round(p.peak_bytes / _GiB, 2), "time_s": round(p.time_s(plan.target.gpu), 2),
                              "calls": p.calls} for p in plan.programs},
    }
    t0 = time.perf_counter()
    trainer = Trainer(run, os.path.join(work, "run"), progress=False)
    rec["trainer_init_s"] = round(time.perf_counter() - t0, 1)
    steps = []
    for s in range(args.steps):
        t0 = time.perf_counter()
        out = trainer.rollout_and_update(s)
        sc = out["scalars"]
        keep = {k_: round(v, 4) for k_, v in sc.items() if k_ in (
            "rollout_s", "verify_s", "update_s", "step_s", "tokens_per_s", "rollout_tokens_per_s", "response_length",
            "finished_fraction", "prompt_length", "loss", "update_skipped")}
        keep["wall_s"] = round(time.perf_counter() - t0, 1)
        stats = jax.devices()[0].memory_stats() or {}
        keep["peak_gib"] = round(stats.get("peak_bytes_in_use", 0) / GiB, 2)
        keep["compiles"] = trainer.compile_log.count
        steps.append(keep)
        print("step", s, json.dumps(keep), flush=True)
    rec["steps"] = steps
    rec["compiled"] = [{"program": c_.program, "shape": c_.shape, "s": round(c_.seconds, 1)}
                       for c_ in trainer.compile_log.compiles if c_.program != "other"]
    # Did XLA fit the update only by recomputing GEMMs (its HLO rematerialization)? The compile-only
    # plan sees it for the target (`plan.fit._recomputed_by_xla`); this is the GPU's own compile.
    from sharpjax.rollout.hlo import rematerialized

    rec["train_step_xla_remat"] = []
    # The update's program: `train_step`, or with train.group_by_length (the paper configs) the
    # per-micro-batch `train_micro_batch`.
    for path in sorted(glob.glob(os.path.join(work, "xla", "*train_*after_optimizations.txt"))):
        with open(path) as f:
            rec["train_step_xla_remat"].append(rematerialized(f.read()))
    shutil.rmtree(os.path.join(work, "xla"), ignore_errors=True)  # kernels' IR too: ~100 MB at 3B
    trainer.close()
    rec["total_s"] = round(time.perf_counter() - t00, 1)
    with open(args.json, "w") as f:
        json.dump(rec, f, indent=1)


# ---- the check ----------------------------------------------------------------------------

def summary_line(res: dict) -> str:
    """BENCHMARKS.md's line for one check (n/a where a stage did not finish)."""
    def fmt(v, spec, unit=""):
        return "n/a" if v is None else format(v, spec) + unit

    r = res.get("rollout") or {}
    t = (res.get("train_step") or {}).get("sharpjax") or {}
    p = res.get("paper_step") or {}
    last = (p.get("steps") or [{}])[-1]
    peak = max((s.get("peak_gib", 0) for s in p.get("steps") or []), default=None)
    frac = r.get("roofline_fraction")
    mfu = t.get("mfu")
    return (f"gpu_check {res['date']} {res['device']}: rollout {fmt(r.get('ratio'), '.2f', 'x')} HF "
            f"({fmt(None if frac is None else 100 * frac, '.1f', '%')} roofline), "
            f"train MFU {fmt(None if mfu is None else 100 * mfu, '.1f', '%')}, "
            f"llama3b {res.get('target', 'h200x1')} step {fmt(last.get('step_s'), '.1f')} s, "
            f"peak {fmt(peak, '.2f')} GiB (plan {fmt((p.get('plan') or {}).get('peak_gib'), '.2f')} GiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU: the same path, in well under a minute")
    ap.add_argument("--budget-s", type=float, default=540, help="the whole check's wall-clock limit")
    ap.add_argument("--target", default="h200x1", help="the paper config's hardware target")
    ap.add_argument("--plan", default="auto",
                    help="config.plan.method of the paper step: auto (the launcher's: AOT where the jax-cuda "
                         "plugin imports, ~1 min of CPU compiles at 3B; else analytic) | analytic (seconds)")
    ap.add_argument("--steps", type=int, default=2, help="paper-config steps (the first compiles)")
    ap.add_argument("--out", default=None, help="the JSON (default benchmarks/results/gpu_check-<date>.json)")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # a stage's own process
    ap.add_argument("--size", default="3b", help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage == "paper":
        paper_stage(args)
        return

    start = time.perf_counter()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out = args.out or os.path.join(HERE, "results", f"gpu_check-{date}{'-tiny' if args.tiny else ''}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    size = "tiny" if args.tiny else "3b"
    work = tempfile.mkdtemp(prefix="gpu_check-")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    res: dict = {"date": date, "device": "n/a", "size": size, "target": args.target, "commit": commit.strip(),
                 "budget_s": args.budget_s, "stages": []}
    try:
        import torch  # noqa: F401

        has_torch = True
    except ImportError:
        has_torch = False
    tiny_args = lambda *a: list(a) if args.tiny else []  # noqa: E731
    # The HF and PyTorch sides: on the GPU (the ratios); not in --tiny (tests/test_benchmarks.py runs them).
    no_torch = lambda flag: [] if has_torch and not args.tiny else [flag]  # noqa: E731

    def left() -> float:
        return args.budget_s - (time.perf_counter() - start)

    def save() -> None:
        res["wall_s"] = round(time.perf_counter() - start, 1)
        res["summary"] = summary_line(res)
        with open(out, "w") as f:
            json.dump(res, f, indent=1)

    # First, the compiled Pallas kernel on the GPU: against dense attention, and skipping finished
    # rows bitwise (GPU-only tests; they skip on a CPU). The decode's split-combine runs without
    # upstream's optimization barrier (`transformer._combine_partials`): a NaN would show here.
    code, text = _stage("gpu_kernel_tests", ["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *GPU_TESTS],
                        min(120, left()), res["stages"])
    res["gpu_kernel_tests"] = {"exit": code, **{kind: int(n) for n, kind in
                                                re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", text)}}
    save()
    stages = [
        ("rollout", ["benchmarks/rollout.py", "--size", size, *no_torch("--skip-hf")], 150),
        ("train_step", ["benchmarks/train_step.py", "--size", size, *tiny_args("--iters", "1"),
                        *no_torch("--skip-torch")], 150),
        ("paper_step", [os.path.relpath(__file__, ROOT), "--stage", "paper", "--size", size, "--target", args.target,
                        "--plan", args.plan, "--steps", str(args.steps), "--work", work], 330),
        ("rollout_xla", ["benchmarks/rollout.py", "--size", size, "--decode-attention", "xla", "--skip-hf"], 90),
        # Item 3: forced realistic response lengths, finished rows skipped vs not (the budget's remainder).
        ("rollout_realistic", ["benchmarks/rollout.py", "--size", size, "--lengths", "realistic", "--skip-hf"], 90),
    ]
    for name, argv, cap in stages:
        if left() < 10:
            res["stages"].append(f"{name}: skipped (budget spent)")
            continue
        path = os.path.join(work, f"{name}.json")
        # The update's optimized HLO (only that module's dumps) for the paper stage's remat check.
        dump = (f"--xla_dump_to={os.path.join(work, 'xla')} --xla_dump_hlo_module_re=.*train_(step|micro_batch).*"
                if name == "paper_step" else "")
        _stage(name, [*argv, "--json", path], min(cap, left()), res["stages"], xla_flags=dump)
        got = _load(path)
        res[name] = got
        if got and res["device"] == "n/a":
            res["device"] = got.get("device", "n/a")
        save()
    # The issue's table, measured and planned side by side.
    p, r, x = res.get("paper_step") or {}, res.get("rollout") or {}, res.get("rollout_xla") or {}
    lr = res.get("rollout_realistic") or {}
    t = (res.get("train_step") or {}).get("sharpjax") or {}
    last = (p.get("steps") or [{}])[-1]
    programs = (p.get("plan") or {}).get("programs") or {}
    res["table"] = {
        "rollout_tok_s": r.get("sharpjax_tok_s"), "rollout_roofline_fraction": r.get("roofline_fraction"),
        "rollout_ratio_hf": r.get("ratio"), "hf_tok_s": r.get("hf_tok_s"), "rollout_xla_tok_s": x.get("sharpjax_tok_s"),
        "realistic_lengths": lr.get("lengths_description"), "realistic_tokens": lr.get("tokens_generated"),
        "realistic_skip_s": lr.get("sharpjax_skip_s"), "realistic_noskip_s": lr.get("sharpjax_noskip_s"),
        "train_mfu": t.get("mfu"), "train_ratio_torch": (res.get("train_step") or {}).get("ratio"),
        "step_s": last.get("step_s"), "rollout_s": last.get("rollout_s"), "verify_s": last.get("verify_s"),
        "update_s": last.get("update_s"), "step_rollout_tok_s": last.get("rollout_tokens_per_s"),
        "sampler_calls": p.get("sampler_calls"), "rows_per_call": p.get("rows_per_call"),
        "peak_gib": max((s.get("peak_gib", 0) for s in p.get("steps") or []), default=None),
        "compiles": last.get("compiles"),
        "gpu_kernel_tests": res.get("gpu_kernel_tests"),
        "train_step_xla_remat_gemms": max((d["gemms"] for d in p.get("train_step_xla_remat") or []), default=None),
        "plan": {"method": (p.get("plan") or {}).get("method"), "peak_gib": (p.get("plan") or {}).get("peak_gib"),
                 "step_s": (p.get("plan") or {}).get("step_time_s"),
                 "rollout_s": (programs.get("rollout") or {}).get("time_s"),
                 "update_s": (programs.get("train_step") or {}).get("time_s")},
    }
    save()
    print(json.dumps(res["table"], indent=1))
    print(f"wrote {out}")
    print(res["summary"], flush=True)


if __name__ == "__main__":
    main()
