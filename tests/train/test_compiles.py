"""A bounded number of compiles (issue 28, item 5): trimmed widths on one grid shared by every
prompt bucket, and each compile of a loop program logged with its shape and time."""

import logging

import jax
import numpy as np
import pytest

from sharpjax.rollout import trim_padding
from sharpjax.rollout.sampler import RolloutBatch
from sharpjax.train.compiles import WIDTH_PROGRAMS, compile_budget, width_step
from sharpjax.train.config import RunConfig
from sharpjax.train.trainer import Trainer
from tests.tiny import make_tiny_model, tiny_config

STEPS = 20


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny_base")))


def _batch(width):
    z = np.zeros((2, width), np.int32)
    return RolloutBatch(tokens=z, attention_mask=z, response_mask=z, logprobs=z.astype(np.float32),
                        sampling_logprobs=z.astype(np.float32), lengths=np.zeros(2, np.int32),
                        finished=np.zeros(2, bool), prompt_index=np.zeros(2, np.int32))


def test_trimmed_widths_share_one_grid_across_prompt_buckets():
    # Prompt buckets 8, 16, 32 with a budget of 64: the trimmed width is a multiple of 16 whatever the bucket.
    for prompt_len in (8, 16, 32):
        for longest in (1, 7, 15, 16, 17, 40, 64):
            out = trim_padding(_batch(prompt_len + 64), prompt_len, longest, width_step=16).tokens.shape[1]
            assert out >= prompt_len + longest and (out % 16 == 0 or out == prompt_len + 64)
            assert out - (prompt_len + longest) < 16
    # Without width_step: the response part on the grid (the old behaviour, unchanged).
    assert trim_padding(_batch(8 + 64), 8, 17).tokens.shape[1] == 8 + 32


@pytest.mark.slow  # 20 training steps (~1 min)
@pytest.mark.guard  # CI's second stage (issue 28)
@pytest.mark.parametrize("group_by_length", [False, True])
def test_twenty_steps_compile_a_bounded_number_of_programs(tiny_model_dir, tmp_path, caplog, group_by_length):
    """Per-prompt budgets (max_new_tokens=None) and three prompt buckets: the sampler's shape and
    the trimmed width both vary from step to step; each loop program compiles each shape once,
    within `compile_budget`, and every compile of the run is counted (small eager ops too). With
    `train.group_by_length` the update compiles once per micro-batch width, on the same grid."""
    config = RunConfig.from_config_dict(tiny_config(
        tiny_model_dir, train__steps=STEPS, data__validation=(), eval__every=0, eval__at_start=False,
        rollout__max_new_tokens=None, rollout__max_total_length=64, rollout__prompt_buckets=(8, 16, 32),
        rollout__prompts_per_step=4, train__checkpoint_every=STEPS, train__group_by_length=group_by_length,
        train__micro_batches=2 if group_by_length else 1,
    ))
    budget = compile_budget(config)
    assert width_step(config) == 16 and (budget.sampler, budget.widths) == (12, 9)
    update = "train_micro" if group_by_length else "train_step"
    jax.clear_caches()  # the other parametrization's programs would otherwise not compile again
    with caplog.at_level(logging.INFO, logger="sharpjax"):
        trainer = Trainer(config, str(tmp_path), progress=False)
        trainer.run()
    log = trainer.compile_log
    loop = log.shapes()
    assert len(set(loop)) == len(loop)  # each (program, shape) compiled once
    sampler = log.shapes("sampler")
    assert 1 <= len(sampler) <= budget.sampler
    assert budget.width_programs == (*WIDTH_PROGRAMS[:2], update)
    for program in budget.width_programs:
        assert len(log.shapes(program)) <= budget.widths
    widths = {shape for program, shape in loop if program == update}
    assert widths
    assert all(int(s.split("x")[1]) % 16 == 0 or int(s.split("x")[1]) in (8 + 64, 16 + 64, 32 + 64) for s in widths)
    # The stated bound on everything XLA compiled in 20 steps, the small eager ops included.
    assert log.count <= budget.programs + 40, [(c.program, c.shape, c.fun_name) for c in log.compiles]
    # Each loop compile is logged with its program, shape and time.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compile ")]
    rows = 8 if group_by_length else 16  # 4 prompts x 4 samples, in 2 micro-batches when grouped
    assert len(lines) == len(loop) and any(f" {update} {rows}x" in ln and " s" in ln for ln in lines)
    print(f"{log.count} compiles in {STEPS} steps ({len(loop)} loop programs: {loop}); {budget}")
