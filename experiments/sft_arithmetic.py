"""SFT of the arithmetic base model that the small-scale RL runs start from (CPU, minutes).

`get_config("default")`: the mediocre base model (a few tens of percent mean@1 at T=1 on
held-out problems), a few minutes on a 2-core CPU. `get_config("quick")`: CI plumbing, tens
of seconds, accuracy may be near zero. Build the run with
`sharpjax.sft.SFTConfig.from_config_dict(get_config(...))` and train (cached) with
`sharpjax.sft.train_base_model(out_dir, config)`, or run this file (the sizes themselves live in
`sharpjax/sft/config.py`, `sft_config`; the sections are `SFTConfig`'s, e.g. `config.optim.steps`):

    python experiments/sft_arithmetic.py --preset default --out_dir runs/sft_default
"""

import argparse
import json
import logging

import ml_collections

from sharpjax.configs.base import sft_base_config
from sharpjax.sft import SFTConfig

PRESETS = ("default", "quick")


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    """The sectioned SFT config of preset `arg` ("default" or "quick"): seed, model, task, optim, eval.

    Every field, with its unit or reason, is documented on `SFTConfig`'s sections (sharpjax/sft/config.py).
    """
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r}; expected one of {PRESETS}.")
    return sft_base_config(arg)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", choices=PRESETS)
    parser.add_argument("--out_dir", required=True, help="model directory (reused when it holds the same run)")
    parser.add_argument("--force", action="store_true", help="retrain even when out_dir holds the same run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from sharpjax.sft import load_sft_info, train_base_model

    out = train_base_model(args.out_dir, SFTConfig.from_config_dict(get_config(args.preset)), force=args.force)
    info = load_sft_info(out)
    summary = {k: info[k] for k in ("initial_loss", "final_loss", "train_seconds", "eval_seconds")}
    summary["accuracy"] = {k: v for k, v in (info["accuracy"] or {}).items() if k != "per_problem"}
    logging.getLogger("sft_arithmetic").info("SFT model in %s: %s", out, json.dumps(summary))


if __name__ == "__main__":
    main()
