"""Small-scale RL on the synthetic arithmetic task (CPU, minutes): the paper's question in miniature.

`python -m sharpjax.train --config experiments/rl_arithmetic.py:<size>:<reward> --workdir runs/x`
<size>:   quick (CI plumbing, seconds) | default (the main job's runs, minutes on a 2-core CPU) | large
<reward>: task | likelihood | power-a<alpha> | tilted-a<alpha>-b<beta_inv>
The base model (`model_dir = "sft:<size>"`) is the project's own SFT model, shipped with the
package in sharpjax/assets/base_<size> (`sharpjax.sft`; its README says how to rebuild it); point `--config.model_dir` at any HF directory to use another. The
sizes live in `sharpjax/configs/small_scale.py`.
"""

from sharpjax.configs.small_scale import arithmetic_rl_config


def get_config(arg: str = "quick:task"):
    size, _, reward = arg.partition(":")
    return arithmetic_rl_config(size, reward or "task")
