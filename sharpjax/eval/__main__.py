"""Evaluate a Hugging Face model directory on math benchmarks: pass@k and maj@k.

    python -m sharpjax.eval --model DIR --benchmarks math500,aime24 --n 16 --out results.json

Defaults are the paper's evaluation protocol (PAPER.md): 16 samples per problem at
temperature 1.0, top-p 1.0, no top-k, pass@k and maj@k for k in 1, 2, 4, 8, 16, answers
checked by the paper's verifier (--verifier math_verify; boxed: the last \\boxed{} only). Benchmarks
are read with `sharpjax.data.load_dataset(name, data_dir=..., limit=...)` (names:
math500, minerva_math, aime24, aime25, hmmt_feb25, gsm8k_test, ...; data directory:
--data_dir or $SHARPJAX_DATA_DIR), or, under any name, from a JSONL file given with
--data_file NAME=PATH (one {"problem", "answer"[, "id"]} object per line). Writes the summaries (and optionally
every response) as JSON and prints a Markdown table.

Inference-time power sampling instead of plain sampling (`sharpjax.rollout.power`), with the
tokens drawn per problem reported (rejected proposals and all particles included):

    python -m sharpjax.eval --model DIR --sampler power-mcmc --alpha 4 --block-size 192 --mh-steps 10
    python -m sharpjax.eval --model DIR --sampler power-smc --alpha 4 --block-size 192 --particles 16
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
import zlib

from sharpjax.data import load_dataset
from sharpjax.eval.metrics import DEFAULT_KS, results_to_json, results_to_markdown


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sharpjax.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, help="Hugging Face model directory (config, safetensors, tokenizer)")
    p.add_argument("--benchmarks", default="math500", help="comma-separated benchmark names")
    p.add_argument("--n", type=int, default=16, help="samples per problem (paper: 16)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (paper: 1.0)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus mass, 1.0 = off (paper: 1.0)")
    p.add_argument("--top_k", type=int, default=0, help="top-k, 0 = off (paper: off)")
    p.add_argument(
        "--max_new_tokens",
        type=int,
        default=2048,
        help="response budget in tokens, the same for every problem (ignored with --max_total_length)",
    )
    p.add_argument(
        "--max_total_length",
        type=int,
        default=None,
        help="each problem's budget is this minus its own prompt's length (the paper's max total sequence "
        "length: 2048 for the 3B models, 8192 for AIME); not with the power samplers",
    )
    p.add_argument("--ignore_eos", action="store_true", help="fixed-length evaluation: every response is full length")
    p.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="k of pass@k / maj@k (k above --n is dropped)")
    p.add_argument(
        "--maj_draws", type=int, default=None, help="maj@k by Monte Carlo over N draws (paper: 1000); default: exact"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    p.add_argument("--batch_size", type=int, default=8, help="prompts per sampler call (rows = batch_size * n)")
    p.add_argument("--seed", type=int, default=42, help="PRNG seed (paper: 42)")
    p.add_argument("--dtype", default=None, help="param dtype (default: the checkpoint's torch_dtype)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--save_responses", action="store_true", help="also write every record (with responses) to the JSON")
    p.add_argument("--data_dir", default=None, help="benchmark JSONL directory (default: $SHARPJAX_DATA_DIR)")
    p.add_argument(
        "--data_file", action="append", default=[], metavar="NAME=PATH", help="read benchmark NAME from a JSONL file"
    )
    p.add_argument("--verify_timeout", type=float, default=5.0, help="seconds per answer check")
    p.add_argument("--num_workers", type=int, default=None, help="verifier processes (default: CPUs, at most 8)")
    p.add_argument(
        "--verifier",
        choices=("math_verify", "boxed"),
        default="math_verify",
        help="answer checking: math_verify = the paper's (NeMo RL hf_math_verify: math-verify over the whole "
        "response); boxed = the last \\boxed{} only",
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    # Inference-time power sampling (sharpjax.rollout.power): pi^alpha without training.
    p.add_argument(
        "--sampler",
        choices=("plain", "power-mcmc", "power-smc"),
        default="plain",
        help="plain: the base sampler; power-mcmc / power-smc: sample pi^alpha (needs --temperature 1)",
    )
    p.add_argument(
        "--alpha", type=float, default=4.0, help="power samplers: the power (proposal at temperature 1/alpha)"
    )
    p.add_argument(
        "--block-size",
        "--block_size",
        dest="block_size",
        type=int,
        default=192,
        help="power samplers: tokens per block",
    )
    p.add_argument(
        "--mh-steps", "--mh_steps", dest="mh_steps", type=int, default=10, help="power-mcmc: MH steps after each block"
    )
    p.add_argument("--particles", type=int, default=16, help="power-smc: particles per sample")
    return p


def load_benchmarks(names: list[str], *, data_files: dict[str, str], data_dir: str | None, limit: int | None):
    """{name: problems}, from --data_file entries or `sharpjax.data.load_dataset`.

    Raises SystemExit with a readable message for an unknown or unreadable benchmark.
    """
    out = {}
    for name in names:
        if name in data_files:
            path = data_files[name]
            if not os.path.isfile(path):
                raise SystemExit(f"error: --data_file {name}={path}: no such file.")
        try:
            # One reader for every file: malformed lines are reported as file:line.
            if name in data_files:
                out[name] = load_dataset(name, path=data_files[name], limit=limit)
            else:
                out[name] = list(load_dataset(name, data_dir=data_dir, limit=limit))
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"error: benchmark {name!r}: {e}") from None
        if not out[name]:
            raise SystemExit(f"error: benchmark {name!r} has no problems.")
    return out


def parse_data_files(parser, items: list[str]) -> dict[str, str]:
    """`--data_file NAME=PATH` flags as {name: path}; a malformed one is a usage error."""
    data_files = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--data_file {item!r}: expected NAME=PATH.")
        data_files[name] = path
    return data_files


def main(argv: list[str] | None = None) -> dict:
    """Runs the CLI; returns the JSON-ready results dict."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not os.path.isdir(args.model):
        parser.error(f"--model {args.model}: no such directory (expected a Hugging Face model directory).")
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    if not names:
        parser.error("--benchmarks is empty.")
    data_files = parse_data_files(parser, args.data_file)
    # Checked before the data and the model load: a zero here would fail only after both.
    for flag, value in (("--n", args.n), ("--batch_size", args.batch_size), ("--max_new_tokens", args.max_new_tokens),
                        ("--max_total_length", args.max_total_length)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: must be a positive integer.")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit {args.limit}: must be a positive integer (leave it out for every problem).")
    _check_numbers(parser, args)
    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        parser.error(f"--ks {args.ks}: expected positive integers separated by commas (e.g. 1,2,4,8,16).")
    _check_out(parser, args.out)
    data_dir = args.data_dir or os.environ.get("SHARPJAX_DATA_DIR")
    # Data first: a bad benchmark name fails in a second, not after loading the model.
    benchmarks = load_benchmarks(names, data_files=data_files, data_dir=data_dir, limit=args.limit)

    power = None
    if args.sampler != "plain":
        from sharpjax.rollout.power import PowerConfig

        if args.max_total_length is not None:
            parser.error(f"--sampler {args.sampler} splits one fixed budget into blocks: use --max_new_tokens")
        if args.temperature != 1.0 or args.top_p != 1.0 or args.top_k != 0:
            parser.error(
                f"--sampler {args.sampler} draws at temperature 1/--alpha: leave --temperature, --top_p, --top_k"
            )
        try:
            power = PowerConfig(
                alpha=args.alpha, block_size=args.block_size, mh_steps=args.mh_steps, num_particles=args.particles
            )
        except ValueError as e:
            parser.error(f"--sampler {args.sampler}: {e}")

    from sharpjax.errors import SharpjaxError
    from sharpjax.models.hf import check_model_files, load_model
    from sharpjax.models.tokenizer import load_tokenizer

    try:  # a missing or corrupt model file (weights' headers, tokenizer, chat template): one line, before the weights
        check_model_files(args.model)
        tokenizer = load_tokenizer(args.model)
    except SharpjaxError as e:
        parser.error(f"--model {args.model}: {e}")

    import jax

    from sharpjax.eval.harness import check_context, default_render_fn, evaluate
    from sharpjax.rollout import sampling_config_for

    params, config = load_model(args.model, dtype=args.dtype)
    sampling = sampling_config_for(
        config, tokenizer, num_samples=args.n, max_total_length=args.max_total_length,
        max_new_tokens=args.max_new_tokens if args.max_total_length is None else args.max_total_length,
        temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, ignore_eos=args.ignore_eos,
    )
    render = default_render_fn(tokenizer)
    for name, problems in benchmarks.items():  # Every benchmark fits, before any sampling.
        try:
            check_context(config, tokenizer, [render(p.problem) for p in problems], sampling)
        except ValueError as e:
            raise SystemExit(f"error: benchmark {name!r}: {e}") from None
    generate_fn = None
    if power is not None:
        from sharpjax.rollout.power import generate_power_text

        generate_fn = functools.partial(generate_power_text, method=args.sampler, power=power)
    key = jax.random.key(args.seed)
    table, records = {}, {}
    for name, problems in benchmarks.items():
        start = time.perf_counter()
        result = evaluate(
            params,
            config,
            tokenizer,
            problems,
            sampling=sampling,
            # Per-benchmark key from the name: results do not depend on the list's order.
            key=jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF),
            batch_size=args.batch_size,
            render_fn=render,
            ks=ks,
            keep_responses=args.save_responses,
            verify_timeout_s=args.verify_timeout,
            num_workers=args.num_workers,
            verifier=args.verifier,
            maj_num_draws=args.maj_draws,
            progress=not args.no_progress,
            desc=name,
            generate_fn=generate_fn,
        )
        table[name] = {**result.summary, "seconds": round(time.perf_counter() - start, 2)}
        if args.save_responses:
            records[name] = [r.to_dict() for r in result.records]
    meta = {
        "model": os.path.abspath(args.model),
        "sampling": dataclasses.asdict(sampling),
        "seed": args.seed,
        "verifier": args.verifier,
    }
    if power is not None:
        meta["power"] = {"sampler": args.sampler, **dataclasses.asdict(power)}
    extra = {**meta, **({"records": records} if args.save_responses else {})}
    # The table first: whatever happens to --out, the evaluation is on the screen.
    print(results_to_markdown(table))
    print("token cost per problem: " + ", ".join(f"{n} {s['token_cost_per_problem']:.0f}" for n, s in table.items()))
    sys.stdout.flush()
    try:
        text = results_to_json(table, args.out, **extra)
    except OSError as e:
        raise SystemExit(f"error: --out {args.out}: cannot write it ({e.strerror}); the table above is the result.")
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return json.loads(text)


def _check_numbers(parser: argparse.ArgumentParser, args) -> None:
    """Every numeric flag finite and in range, one line each, before any data or model loads
    (`--temperature nan` sampled empty responses; `--alpha inf` failed late inside JAX)."""
    from sharpjax.rewards.pool import MAX_TIMEOUT_S

    checks = (
        ("--temperature", args.temperature, 0 < args.temperature < math.inf, "a finite number > 0"),
        ("--top_p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]"),
        ("--top_k", args.top_k, args.top_k >= 0, "an integer >= 0 (0 = off)"),
        ("--alpha", args.alpha, 0 < args.alpha < math.inf, "a finite number > 0"),
        ("--verify_timeout", args.verify_timeout, 0 < args.verify_timeout <= MAX_TIMEOUT_S,
         f"in (0, {MAX_TIMEOUT_S:g}] seconds"),
        ("--seed", args.seed, args.seed >= 0, "an integer >= 0"),
        ("--maj_draws", args.maj_draws, args.maj_draws is None or args.maj_draws >= 1, "a positive integer"),
        ("--num_workers", args.num_workers, args.num_workers is None or args.num_workers >= 0,
         "an integer >= 0 (0 = in this process)"),
        ("--block-size", args.block_size, args.block_size >= 1, "a positive integer"),
        ("--mh-steps", args.mh_steps, args.mh_steps >= 0, "an integer >= 0"),
        ("--particles", args.particles, args.particles >= 1, "a positive integer"),
    )
    for flag, value, ok, expected in checks:
        if not ok:  # NaN fails every comparison, so it lands here too
            parser.error(f"{flag} {value}: must be {expected}.")


def _check_out(parser: argparse.ArgumentParser, out: str | None) -> None:
    """--out can be written, checked before the model loads (an error after sampling lost it all)."""
    if out is None:
        return
    if os.path.isdir(out):
        parser.error(f"--out {out}: is a directory; give a file path.")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        parser.error(f"--out {out}: the directory {parent} does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        parser.error(f"--out {out}: not writable by this user; give another path.")


if __name__ == "__main__":
    main()
