"""Every RL run of the paper as a launch command: `python experiments/sweep.py [--model llama3b]`.

PAPER.md: for Llama-3.2-3B-Instruct and Qwen2.5-3B-Instruct, task reward, likelihood maximization,
sampling alpha in {0.5, 1, 1.25, 2, 4} x beta_inv in {0, 100, 10000}, and the fixed-length variant
of each; for Qwen3-4B-Instruct-2507, likelihood, task and alpha x beta_inv in {0, 10000}.
"""

import argparse

ALPHAS = (0.5, 1, 1.25, 2, 4)


def _fmt(x) -> str:
    return f"{x:g}"


def runs(model: str) -> list[str]:
    """Config arguments (`<model>:<reward>[:fixed]`) of the paper's runs for one model."""
    betas = (0, 10000) if model == "qwen3_4b" else (0, 100, 10000)
    rewards = ["task", "likelihood"]
    for a in ALPHAS:
        for b in betas:
            rewards.append(f"power-a{_fmt(a)}" if b == 0 else f"tilted-a{_fmt(a)}-b{_fmt(b)}")
    out = [f"{model}:{r}" for r in rewards]
    if model != "qwen3_4b":
        out += [f"{model}:{r}:fixed" for r in rewards]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=("llama3b", "qwen25_3b", "qwen3_4b"), action="append")
    parser.add_argument("--model_dir", default=None, help="local HF directory of the model")
    args = parser.parse_args()
    for model in args.model or ("llama3b", "qwen25_3b", "qwen3_4b"):
        for arg in runs(model):
            extra = f" --config.model_dir={args.model_dir}" if args.model_dir else ""
            print(f"python -m sharpjax.train --config experiments/rl_math.py:{arg}{extra} "
                  f"--workdir runs/{arg.replace(':', '_')}")


if __name__ == "__main__":
    main()
