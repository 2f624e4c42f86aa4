"""Subprocess with 8 fake CPU devices: the plan's programs of a tiny run compiled for N = 1 and
N = 4 devices on the fsdp axis (and N = 4 on the data axis); prints the splits as JSON."""

import dataclasses
import json
import os
import sys
import tempfile

import jax

from sharpjax.plan import model_config_for, parse_target
from sharpjax.plan.worksplit import worksplit
from sharpjax.train.config import RunConfig

TINY_HF = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=4096,
               tie_word_embeddings=True, eos_token_id=2, torch_dtype="float32")


def tiny(d: str, remat: str, dtype: str = "float32") -> RunConfig:
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(TINY_HF, f)
    return RunConfig.from_config_dict(dict(
        model_dir=d, dtype=dtype,
        rollout=dict(prompts_per_step=8, samples_per_prompt=4, max_total_length=160, max_new_tokens=32,
                     prompt_buckets=(128,)),
        train=dict(micro_batches=2, remat=remat, logits_chunk=64)))


def main():
    assert jax.device_count() == 8
    remat = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        run = tiny(d, remat)
        model = model_config_for(run).replace(attention="xla")
        target = parse_target("h100x1")  # only its sampling settings matter here (decode_attention="xla")
        splits = worksplit(run, model, target, (1, 4), devices=jax.devices())
        splits += worksplit(run, model, target, (4,), ("train_step",), devices=jax.devices(), axis="data")
    print("SPLITS", json.dumps([dataclasses.asdict(s) | {"largest_dots": s.largest_dots[:2]} for s in splits]))


if __name__ == "__main__":
    main()
