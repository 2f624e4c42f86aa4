"""How much of a post-trained model's behaviour is sharpening of its base? A diagnosis on a benchmark.

    python -m sharpjax.diagnose --base BASE_DIR --policy RL_DIR --benchmarks math500 --n 64 --out diagnosis
    python -m sharpjax.diagnose --base B --policy task=DIR1 --policy likelihood=DIR2 --task arithmetic \\
        --benchmarks arithmetic --max_new_tokens 64 --block-size 8 --mh-steps 2

Both models (Hugging Face directories with the same tokenizer) sample n responses per problem at T = 1
through the evaluation harness (the task's prompt and verifier: for --task math those of
`python -m sharpjax.eval`, the paper's prompt and math-verify; for --task arithmetic the small-scale
task's, on the main job's held-out problems, benchmark name "arithmetic"); the base scores every
response of both teacher-forced; the base is also sharpened without training (--baselines: temperature
1/alpha, power sampling pi^alpha). Written to --out: report.md (tables and a numeric summary per policy),
report.json (every number) and PNGs (<benchmark>_pass_at_k.png, <benchmark>_likelihood.png). Measured per
benchmark and policy: pass@k / maj@k curves for k = 1..n and where they cross; coverage (problems solved
by one model only, bootstrap intervals); agreement with the base's majority answer, split by its
correctness; the base's log-likelihood of the policy's responses vs of its own samples, and the length
shift; the baselines' pass@k and token cost beside the policy's.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time
import zlib

import numpy as np

from sharpjax.diagnose import metrics
from sharpjax.eval.metrics import DEFAULT_KS

BASELINES = ("temp", "power-mcmc", "power-smc")
ARITHMETIC = "arithmetic"  # --task arithmetic's benchmark: the main job's held-out problems


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sharpjax.diagnose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the base model's Hugging Face directory")
    p.add_argument("--policy", action="append", required=True, metavar="[NAME=]DIR",
                   help="a post-trained model's directory (repeat for several; NAME defaults to the folder's name)")
    p.add_argument("--benchmarks", default="math500", help="comma-separated benchmark names")
    p.add_argument("--task", choices=("math", ARITHMETIC), default="math",
                   help="prompt and verifier: math (the eval CLI's) or arithmetic (the small-scale task)")
    p.add_argument("--n", type=int, default=64, help="samples per problem for the base and each policy")
    p.add_argument("--max_new_tokens", type=int, default=2048, help="response budget in tokens")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N problems of each benchmark (arithmetic: how many, default 300)")
    p.add_argument("--batch_size", type=int, default=8, help="prompts per sampler call (rows = batch_size * n)")
    p.add_argument("--seed", type=int, default=42, help="PRNG seed (the same key for every model: paired samples)")
    p.add_argument("--dtype", default=None, help="param dtype (default: the checkpoints' torch_dtype)")
    p.add_argument("--out", default="diagnosis", help="output directory (report.md, report.json, PNGs)")
    p.add_argument("--data_dir", default=None, help="benchmark JSONL directory (default: $SHARPJAX_DATA_DIR)")
    p.add_argument("--data_file", action="append", default=[], metavar="NAME=PATH",
                   help="read benchmark NAME from a JSONL file")
    p.add_argument("--verifier", choices=("math_verify", "boxed"), default="math_verify",
                   help="--task math's answer checking, as in python -m sharpjax.eval")
    p.add_argument("--verify_timeout", type=float, default=5.0, help="seconds per answer check")
    p.add_argument("--num_workers", type=int, default=None, help="verifier processes (default: CPUs, at most 8)")
    p.add_argument("--baselines", default="temp,power-mcmc",
                   help=f"the base sharpened without training, comma-separated of {', '.join(BASELINES)}; "
                   "'' for none")
    p.add_argument("--baseline_n", type=int, default=16, help="samples per problem of each baseline")
    p.add_argument("--alpha", type=float, default=4.0, help="baselines: temperature 1/alpha; power pi^alpha")
    p.add_argument("--block-size", "--block_size", dest="block_size", type=int, default=192,
                   help="power samplers: tokens per block")
    p.add_argument("--mh-steps", "--mh_steps", dest="mh_steps", type=int, default=10,
                   help="power-mcmc: MH steps after each block")
    p.add_argument("--particles", type=int, default=16, help="power-smc: particles per sample")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the coverage intervals")
    p.add_argument("--score_tokens", type=int, default=32768,
                   help="tokens per micro-batch when the base scores responses (memory, not results)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


@dataclasses.dataclass
class Args:
    """The checked arguments (`parse_args`)."""

    base: str
    policies: dict[str, str]
    benchmarks: dict[str, list]
    baselines: tuple[str, ...]
    power: object | None  # PowerConfig, when a power baseline runs
    ns: argparse.Namespace


def _policies(parser, items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = os.path.basename(os.path.normpath(item)), item
        if not name or not path:
            parser.error(f"--policy {item!r}: expected DIR or NAME=DIR.")
        if name in out or name == "base":
            parser.error(f"--policy {item!r}: the name {name!r} is taken; give each policy its own NAME=DIR.")
        out[name] = path
    return out


def parse_args(argv: list[str] | None = None) -> Args:
    """Parses and checks everything that can fail before a model loads (directories, tokenizers, data)."""
    parser = _parser()
    ns = parser.parse_args(argv)
    policies = _policies(parser, ns.policy)
    for flag, value in (("--n", ns.n), ("--batch_size", ns.batch_size), ("--max_new_tokens", ns.max_new_tokens),
                        ("--baseline_n", ns.baseline_n), ("--bootstrap", ns.bootstrap),
                        ("--score_tokens", ns.score_tokens), ("--limit", ns.limit)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: must be a positive integer.")
    baselines = tuple(b.strip() for b in ns.baselines.split(",") if b.strip())
    for b in baselines:
        if b not in BASELINES:
            parser.error(f"--baselines {ns.baselines!r}: {b!r} is not one of {', '.join(BASELINES)}.")
    if not ns.alpha > 0:
        parser.error(f"--alpha {ns.alpha}: must be > 0.")
    power = None
    if any(b.startswith("power") for b in baselines):
        from sharpjax.rollout.power import PowerConfig

        try:
            power = PowerConfig(alpha=ns.alpha, block_size=ns.block_size, mh_steps=ns.mh_steps,
                                num_particles=ns.particles)
        except ValueError as e:
            parser.error(f"--baselines {ns.baselines}: {e}")
    for flag, path in (("--base", ns.base), *(("--policy", item.rpartition("=")[2]) for item in ns.policy)):
        if not os.path.isdir(path):
            parser.error(f"{flag} {path}: no such directory (expected a Hugging Face model directory).")
    _check_models(parser, ns.base, policies)
    names = [b.strip() for b in ns.benchmarks.split(",") if b.strip()]
    if not names:
        parser.error("--benchmarks is empty.")
    benchmarks = _load_benchmarks(parser, ns, names)
    return Args(base=ns.base, policies=policies, benchmarks=benchmarks, baselines=baselines, power=power, ns=ns)


def _check_models(parser, base: str, policies: dict[str, str]) -> None:
    """Readable files and one vocabulary: the base scores the policies' tokens as they are."""
    from sharpjax.errors import SharpjaxError
    from sharpjax.models.hf import check_model_files
    from sharpjax.models.tokenizer import load_tokenizer

    try:
        base_config = check_model_files(base)
        base_vocab = load_tokenizer(base).get_vocab()
        for name, path in policies.items():
            config = check_model_files(path)
            if config.vocab_size != base_config.vocab_size or load_tokenizer(path).get_vocab() != base_vocab:
                parser.error(f"--policy {name}: its tokenizer differs from the base's (vocabulary of "
                             f"{config.vocab_size} vs {base_config.vocab_size}); the base can only score the policy's "
                             "responses token by token with the same tokenizer: pass the policy's own base model.")
    except (SharpjaxError, OSError, ValueError) as e:
        parser.error(str(e))


def _load_benchmarks(parser, ns, names: list[str]) -> dict[str, list]:
    from sharpjax.eval.__main__ import parse_data_files

    data_files = parse_data_files(parser, ns.data_file)
    if ns.task == ARITHMETIC:
        from sharpjax.configs.small_scale import size
        from sharpjax.reproduce import TEST_SEED
        from sharpjax.tasks import arithmetic

        out = {}
        for name in names:
            if name != ARITHMETIC and name not in data_files:
                parser.error(f"--task arithmetic: benchmark {name!r} needs --data_file {name}=PATH (or use the "
                             f"generated {ARITHMETIC!r}).")
        rest = [n for n in names if n != ARITHMETIC]
        if ARITHMETIC in names:  # the main job's held-out problems: same seed, split and difficulty
            count = ns.limit or size("default").test_problems
            difficulty = arithmetic.difficulty_for("auto", ns.base)
            out[ARITHMETIC] = arithmetic.generate_problems(count, seed=TEST_SEED, difficulty=difficulty, split="test")
    else:
        rest, out = names, {}
    from sharpjax.eval.__main__ import load_benchmarks

    loaded = load_benchmarks(rest, data_files=data_files, data_dir=ns.data_dir or os.environ.get("SHARPJAX_DATA_DIR"),
                             limit=ns.limit) if rest else {}
    return {name: out.get(name, loaded.get(name)) for name in names}


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class _Eta:
    """Stage-level progress: each stage's cost in plain-sample units (problems x samples x the sampler's token
    factor), and seconds per unit measured on the stages done so far (compile time included)."""

    def __init__(self, stages: list[tuple[str, object]], say):
        self.stages, self.say = stages, say
        self.done_units, self.done_seconds, self.t0 = 0.0, 0.0, time.perf_counter()

    def start(self, i: int) -> float:
        label, units = self.stages[i]
        elapsed = time.perf_counter() - self.t0
        left = ""
        if self.done_units:
            remaining = sum(u() for _, u in self.stages[i:])
            left = f", about {_minutes(remaining * self.done_seconds / self.done_units)} left"
        self.say(f"[{i + 1}/{len(self.stages)}] {label} ({_minutes(elapsed)} elapsed{left})")
        return time.perf_counter()

    def end(self, i: int, start: float) -> None:
        self.done_units += self.stages[i][1]()
        self.done_seconds += time.perf_counter() - start


@functools.cache
def _score_fn(base_config):
    """The base's jitted response scorer, one per model config: every stage (the base, each policy) reuses one
    compilation per shape instead of tracing a fresh closure each time."""
    import jax
    import jax.numpy as jnp

    from sharpjax.rollout.scoring import score_tokens

    @functools.partial(jax.jit, static_argnames=("micro",))
    def score(params, tokens_BT, mask_BT, response_BT, micro):
        logp_BT = score_tokens(params, tokens_BT, mask_BT, config=base_config, micro_batch_rows=micro)
        return jnp.sum(jnp.where(response_BT > 0, logp_BT, 0.0), axis=-1)

    return score


def _scoring_generate(base_params, base_config, tokens_per_micro_batch: int, sink: list):
    """A `generate_fn` for the harness: plain sampling, and the base's log-likelihood of each response
    ([rows], summed over the response's tokens, the stop token included) appended to `sink`."""
    from sharpjax.parallel import to_host
    from sharpjax.rollout.scoring import rows_per_micro_batch
    from sharpjax.rollout.text import generate_text

    score = _score_fn(base_config)

    def generate(params, config, tokenizer, prompts, key, sampling, *, buckets):
        texts, rollout = generate_text(params, config, tokenizer, prompts, key, sampling, buckets=buckets)
        b, t = rollout.tokens.shape
        micro = rows_per_micro_batch(b, t, tokens_per_micro_batch=tokens_per_micro_batch)
        sink.append(to_host(score(base_params, rollout.tokens, rollout.attention_mask, rollout.response_mask, micro)))
        return texts, rollout

    return generate


def run(args: Args, *, progress: bool = True) -> dict:
    """Samples, scores and measures; writes the report into args.ns.out; returns report.json's content."""
    import jax

    from sharpjax.diagnose.report import compare, summary_lines, write_report
    from sharpjax.eval.harness import check_context, default_render_fn, evaluate
    from sharpjax.models.hf import load_model
    from sharpjax.models.tokenizer import load_tokenizer
    from sharpjax.rollout import sampling_config_for
    from sharpjax.rollout.power import generate_power_text

    ns = args.ns
    say = print if progress else (lambda *a, **k: None)
    t0 = time.perf_counter()
    ks = list(range(1, ns.n + 1))
    maj_ks = metrics.curve_ks(ns.n)
    mean_length = {}  # benchmark -> the base's mean response length (the power stages' token estimate)

    def units(bench, samples, method):
        def f():
            length = mean_length.get(bench, ns.max_new_tokens / 2)
            factor = metrics.estimated_token_factor(method, mean_length=length, max_new_tokens=ns.max_new_tokens,
                                                    block_size=ns.block_size, mh_steps=ns.mh_steps,
                                                    num_particles=ns.particles)
            return len(args.benchmarks[bench]) * samples * factor
        return f

    stages = [(f"base on {b}: {ns.n} samples per problem, scored by the base", units(b, ns.n, "plain"), "base", b)
              for b in args.benchmarks]
    stages += [(f"{p} on {b}: {ns.n} samples per problem, scored by the base", units(b, ns.n, "plain"), p, b)
               for p in args.policies for b in args.benchmarks]
    stages += [(f"baseline {m}-a{ns.alpha:g} on {b}: {ns.baseline_n} samples per problem", units(b, ns.baseline_n, m),
                m, b) for m in args.baselines for b in args.benchmarks]
    eta = _Eta([(label, u) for label, u, _, _ in stages], say)

    base_params, base_config = load_model(args.base, dtype=ns.dtype)
    tokenizers = {"base": load_tokenizer(args.base)}
    tokenizers.update({p: load_tokenizer(d) for p, d in args.policies.items()})

    def render_for(tokenizer):
        if ns.task == ARITHMETIC:
            from sharpjax.tasks import arithmetic

            return functools.partial(arithmetic.render, tokenizer)
        return default_render_fn(tokenizer)

    def verify_kw():
        if ns.task == ARITHMETIC:
            from sharpjax.tasks import arithmetic

            return {"verify_fn": arithmetic.verify}
        return {"verifier": ns.verifier, "verify_timeout_s": ns.verify_timeout, "num_workers": ns.num_workers}

    def sampling(config, tokenizer, samples, temperature=1.0):
        return sampling_config_for(config, tokenizer, max_new_tokens=ns.max_new_tokens, num_samples=samples,
                                   temperature=temperature)

    for name, tok in tokenizers.items():  # every prompt fits every model, before any sampling
        for bench, problems in args.benchmarks.items():
            try:
                check_context(base_config, tok, [render_for(tok)(p.problem) for p in problems],
                              sampling(base_config, tok, ns.n))
            except ValueError as e:
                raise SystemExit(f"error: {name} on {bench}: {e}") from None

    key = jax.random.key(ns.seed)
    keys = {b: jax.random.fold_in(key, zlib.crc32(b.encode()) & 0x7FFFFFFF) for b in args.benchmarks}
    samples: dict[str, dict[str, dict]] = {b: {} for b in args.benchmarks}
    baselines: dict[str, dict[str, dict]] = {b: {} for b in args.benchmarks}
    loaded = {"base": (base_params, base_config)}
    for i, (_, _, model, bench) in enumerate(stages):
        start = eta.start(i)
        problems = args.benchmarks[bench]
        common = dict(key=keys[bench], ks=DEFAULT_KS, keep_responses=False, progress=progress and not ns.no_progress,
                      desc=f"{model}/{bench}", **verify_kw())
        if model in BASELINES:
            tok = tokenizers["base"]
            power = model.startswith("power")
            result = evaluate(
                base_params, base_config, tok, problems, sampling=sampling(
                    base_config, tok, ns.baseline_n, 1.0 if power else 1.0 / ns.alpha),
                batch_size=max(1, ns.batch_size // ns.particles) if model == "power-smc" else ns.batch_size,
                render_fn=render_for(tok), generate_fn=functools.partial(
                    generate_power_text, method=model, power=args.power) if power else None, **common)
            baselines[bench][f"{model}-a{ns.alpha:g}"] = _entry(result, ns.baseline_n, time.perf_counter() - start)
        else:
            if model not in loaded:  # one policy in memory at a time, beside the base
                loaded = {"base": loaded["base"], model: load_model(args.policies[model], dtype=ns.dtype)}
            params, config = loaded[model]
            tok, sink = tokenizers[model], []
            result = evaluate(params, config, tok, problems, sampling=sampling(config, tok, ns.n),
                              batch_size=ns.batch_size, render_fn=render_for(tok),
                              generate_fn=_scoring_generate(base_params, base_config, ns.score_tokens, sink), **common)
            entry = _entry(result, ns.n, time.perf_counter() - start, ks=ks, maj_ks=maj_ks)
            entry["logp"] = np.concatenate(sink)[: len(problems) * ns.n].reshape(len(problems), ns.n)
            entry["lengths"] = np.array([r.lengths for r in result.records], float)
            entry["records"] = result.records
            samples[bench][model] = entry
            if model == "base":
                mean_length[bench] = float(entry["summary"]["mean_length"])
        eta.end(i, start)

    report = {"base": os.path.abspath(args.base),
              "policies": {p: os.path.abspath(d) for p, d in args.policies.items()},
              "settings": {"n": ns.n, "temperature": 1.0, "max_new_tokens": ns.max_new_tokens, "task": ns.task,
                           "seed": ns.seed, "baseline_n": ns.baseline_n, "alpha": ns.alpha,
                           "power": None if args.power is None else dataclasses.asdict(args.power),
                           "bootstrap": ns.bootstrap, "verifier": ns.verifier if ns.task == "math" else ARITHMETIC},
              "benchmarks": {}}
    for bench, models in samples.items():
        plain = models["base"]["summary"]["token_cost_per_problem"] / ns.n
        for entry in [*models.values(), *baselines[bench].values()]:
            entry["cost_ratio"] = entry["summary"]["token_cost_per_problem"] / entry["n"] / plain
        report["benchmarks"][bench] = {
            "num_problems": len(args.benchmarks[bench]), "n": ns.n, "ks": ks, "maj_ks": maj_ks,
            "models": {m: _public(e) for m, e in models.items()},
            "baselines": {m: _public(e) for m, e in baselines[bench].items()},
            "policies": {p: compare(models["base"], models[p], num_boot=ns.bootstrap, seed=ns.seed)
                         for p in args.policies},
        }
    report["seconds"] = time.perf_counter() - t0
    paths = write_report(ns.out, report)
    for bench, b in report["benchmarks"].items():
        for policy in args.policies:
            say(f"\n{policy} vs base on {bench}:")
            for component, direction, text in summary_lines(b, policy):
                say(f"  {component} ({direction}): {text}")
    say(f"\nwrote {', '.join(paths)} ({_minutes(report['seconds'])} in all)")
    return report


def _entry(result, n: int, seconds: float, *, ks=None, maj_ks=None) -> dict:
    """One model's (or baseline's) curves and summary; k = 1..n unless given."""
    ks = ks or list(range(1, n + 1))
    maj_ks = maj_ks or metrics.curve_ks(n)
    return {"n": n, "ks": ks, "maj_ks": maj_ks, "pass": metrics.pass_curve(result.records, ks).tolist(),
            "maj": metrics.maj_curve(result.records, maj_ks).tolist(), "seconds": seconds,
            "summary": {k: float(v) for k, v in result.summary.items()}}


def _public(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("logp", "lengths", "records")}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run(args, progress=True)


if __name__ == "__main__":
    main()
