"""The main job: `python -m sharpjax`.

Until the end-to-end reproduction lands, this is a CPU demo of the whole foundation path:
build a tiny model and tokenizer locally (nothing is downloaded), save them as a Hugging
Face directory, load them back through the HF import path, render a math prompt with the
chat template, and sample an RLOO group of responses with the jitted sampler.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import numpy as np

from sharpjax.models import ModelConfig, init_params, load_model, save_model
from sharpjax.models.tokenizer import build_char_tokenizer, load_tokenizer, render_chat
from sharpjax.rollout import SamplingConfig
from sharpjax.rollout.text import generate_text

PROMPT = "Think step-by-step to solve the following problem. Output your answer inside of \\boxed{} tags.:\n{problem}\n\nLet's think step-by-step"


def build_demo_checkpoint(path: str, seed: int = 0) -> str:
    tokenizer = build_char_tokenizer()
    config = ModelConfig(model_type="llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_ids=(tokenizer.eos_token_id,),
                         pad_token_id=tokenizer.pad_token_id, max_position_embeddings=1024)
    save_model(path, init_params(config, jax.random.key(seed)), config)
    tokenizer.save_pretrained(path)
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where to write the demo checkpoint (default: a temp dir)")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="sharpjax_demo_")
    model_dir = build_demo_checkpoint(os.path.join(workdir, "tiny_llama"), args.seed)
    params, config = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    prompt = render_chat(tokenizer, PROMPT.replace("{problem}", "What is 12 + 30?"))
    sampling = SamplingConfig(max_new_tokens=48, num_samples=args.samples, stop_token_ids=config.eos_token_ids,
                              pad_id=tokenizer.pad_token_id)
    texts, rollout = generate_text(params, config, tokenizer, [prompt], jax.random.key(args.seed), sampling)
    print(f"loaded {model_dir} ({config.model_type}, {config.num_params:,} params) through the HF import path")
    print(f"prompt: {prompt!r}")
    mean_logp = np.asarray(rollout.logprobs.sum(-1) / rollout.lengths)
    for i, text in enumerate(texts):
        print(f"sample {i}: {int(rollout.lengths[i])} tokens, mean log-prob {mean_logp[i]:.2f}: {text!r}")


if __name__ == "__main__":
    main()
