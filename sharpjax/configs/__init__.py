"""Configs: one base config (the paper's defaults), the paper's runs, the small-scale runs.

    base.py         base_config(): every field of `RunConfig` as an ml-collections ConfigDict,
                    reward_preset(): the paper's named rewards (task, likelihood, power-a2, ...),
                    sft_base_config(size): every field of the SFT base model's `SFTConfig`, likewise
    paper.py        the paper's runs (models, data, lengths, batch): paper_config()
    small_scale.py  the one size table of the small-scale experiment (SFT base, RL, evaluation)

`experiments/*.py` are thin `get_config()` files over these; every config is validated into a
typed `RunConfig` (`sharpjax.train.config`), or `SFTConfig` (`sharpjax.sft.config`), before anything
heavy runs.
"""

from sharpjax.configs.base import base_config, reward_preset, sft_base_config

__all__ = ["base_config", "reward_preset", "sft_base_config"]
