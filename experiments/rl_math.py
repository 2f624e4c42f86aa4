"""The paper's RL runs (PAPER.md): `python -m sharpjax.train --config experiments/rl_math.py:<model>:<reward>[:fixed][:<target>]`.

<model>:  llama3b (Llama-3.2-3B-Instruct on Hendrycks MATH), qwen25_3b (Qwen2.5-3B-Instruct on
          Hendrycks MATH), qwen3_4b (Qwen3-4B-Instruct-2507 on DeepScaleR).
<reward>: task | likelihood | power-a<alpha> | tilted-a<alpha>-b<beta_inv> (e.g. power-a2,
          tilted-a4-b100); see `sharpjax.configs.reward_preset`.
fixed:    the "fixed-length" variant: EOS ignored in training and evaluation.
<target>: the hardware the run is sized for (mesh, micro-batches, sampler chunk), checked by
          `python -m sharpjax.plan` and by the launcher before it loads weights: h100x4 (the
          paper's 4x H100 80GB, default) or h200x1 for the 3B models; h100x8 (default) or h200x2
          for qwen3_4b.

`--config.model_dir` must point at a local Hugging Face directory of the model (weights are
never downloaded at run time). `experiments/sweep.py` lists every run of the paper. The
settings themselves live in `sharpjax/configs/paper.py`, on the base config.
"""

import ml_collections

from sharpjax.configs.paper import HARDWARE, MODELS, paper_config


def get_config(arg: str = "llama3b:task") -> ml_collections.ConfigDict:
    parts = arg.split(":")
    targets = HARDWARE.get(parts[0], {})
    target = parts.pop() if len(parts) > 2 and parts[-1] in targets else None
    if parts[0] not in MODELS or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "fixed"):
        raise ValueError(
            f"config argument {arg!r}: expected <model>:<reward>[:fixed][:<target>] with model in {sorted(MODELS)} "
            f"and target in {sorted(targets)}."
        )
    return paper_config(parts[0], parts[1], fixed_length=len(parts) == 3, target=target)
