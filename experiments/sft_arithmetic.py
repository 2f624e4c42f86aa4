"""SFT of the arithmetic base model that the small-scale RL runs start from (CPU, minutes).

`get_config("default")`: the mediocre base model (a few tens of percent mean@1 at T=1 on
held-out problems), a few minutes on a 2-core CPU. `get_config("quick")`: CI plumbing, tens
of seconds, accuracy may be near zero. Build the run with
`sharpjax.sft.SFTConfig.from_config_dict(get_config(...))` and train (cached) with
`sharpjax.sft.train_base_model(out_dir, config)`, or run this file (the sizes themselves live in
`sharpjax/configs/small_scale.py`):

    python experiments/sft_arithmetic.py --preset default --out_dir runs/sft_default
"""

import argparse
import json
import logging

import ml_collections

from sharpjax.configs.small_scale import sft_config
from sharpjax.sft import SFTConfig

PRESETS = ("default", "quick")


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    """The sectioned SFT config of preset `arg` ("default" or "quick")."""
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r}; expected one of {PRESETS}.")
    d = sft_config(arg)
    c = ml_collections.ConfigDict()
    c.seed = d.seed  # PRNG seed of init, training problems and batch order

    c.model = ml_collections.ConfigDict()
    c.model.hidden_size = d.hidden_size  # D, residual width
    c.model.intermediate_size = d.intermediate_size  # F, SwiGLU width
    c.model.num_layers = d.num_layers  # L; depth helps arithmetic more than width here
    c.model.num_heads = d.num_heads  # N query heads
    c.model.num_kv_heads = d.num_kv_heads  # K key/value heads
    c.model.head_dim = d.head_dim  # H
    c.model.max_position_embeddings = d.max_position_embeddings  # context of the exported model (RL: prompt + response)

    c.task = ml_collections.ConfigDict()
    c.task.difficulty = ml_collections.ConfigDict()
    c.task.difficulty.min_operands = d.difficulty.min_operands  # integers per expression (steps = operands - 1)
    c.task.difficulty.max_operands = d.difficulty.max_operands
    c.task.difficulty.min_digits = d.difficulty.min_digits  # digits per operand
    c.task.difficulty.max_digits = d.difficulty.max_digits
    c.task.difficulty.ops = d.difficulty.ops  # operators drawn between operands
    c.task.difficulty.mul_max_digits = d.difficulty.mul_max_digits  # digits of an operand next to '*'
    c.task.num_train_problems = d.num_train_problems  # training pool; 0 = steps * batch_size (each seen once)
    c.task.max_seq_len = d.max_seq_len  # T, tokens per padded training row (prompt + solution + EOS)
    c.task.shortcut_fraction = d.shortcut_fraction  # share of shortcut solutions (answer stated, minus sign dropped)
    c.task.shortcut_from_step = d.shortcut_from_step  # steps before it: stepwise solutions only

    c.optim = ml_collections.ConfigDict()
    c.optim.steps = d.steps  # optimizer steps
    c.optim.batch_size = d.batch_size  # examples per step
    c.optim.learning_rate = d.learning_rate  # peak AdamW lr (tiny model: large lr)
    c.optim.final_lr_fraction = d.final_lr_fraction  # cosine decay ends at this fraction of the peak
    c.optim.warmup_steps = d.warmup_steps  # linear warmup from 0
    c.optim.weight_decay = d.weight_decay  # AdamW decoupled weight decay
    c.optim.max_grad_norm = d.max_grad_norm  # global-norm clip; 0 disables

    c.eval = ml_collections.ConfigDict()
    c.eval.eval_problems = d.eval_problems  # held-out problems for sft_info.json's accuracy
    c.eval.eval_samples = d.eval_samples  # samples per problem at T=1 (mean@1 averages them)
    c.eval.eval_seed = d.eval_seed  # seed of the held-out problems (drawn from the task's test split)
    c.eval.max_new_tokens = d.max_new_tokens  # response budget when sampling
    c.eval.log_every = d.log_every  # steps between progress log lines

    return c


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
