"""Verification off the critical path (issue 28, item 4): with several sampler calls a step, each
call's responses are verified on the host while the device decodes the next, the last one's
after the reference scoring is dispatched; every row is verified once, in row order."""

import dataclasses

import numpy as np
import pytest

import sharpjax.train.trainer as trainer_module
from sharpjax.rollout.text import decode_responses
from sharpjax.train.config import RunConfig
from sharpjax.train.trainer import Trainer
from tests.tiny import make_tiny_model, tiny_config


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp("tiny_base")))


@pytest.mark.slow  # one training step (~1 min)
@pytest.mark.guard  # CI's second stage (issue 28)
def test_each_chunk_is_verified_while_the_next_decodes(tiny_model_dir, tmp_path, monkeypatch):
    config = RunConfig.from_config_dict(tiny_config(
        tiny_model_dir, train__steps=1, data__validation=(), eval__at_start=False, rollout__prompts_per_step=4,
        rollout__chunk_prompts=1,
    ))
    trainer = Trainer(config, str(tmp_path), progress=False)
    assert trainer.step_fns.needs_ref  # the config scores the reference: its dispatch is in the order below
    events, rollouts, verified = [], [], []
    sample = trainer_module.sample

    def traced_sample(*args, **kwargs):
        out = sample(*args, **kwargs)
        events.append("sample")
        rollouts.append(out)
        return out

    def traced_ref(*args, **kwargs):
        events.append("reference")
        return ref(*args, **kwargs)

    def traced_verify(responses, answers):
        events.append(f"verify {len(responses)}")
        verified.extend(responses)
        return verify(responses, answers)

    ref, verify = trainer.step_fns.ref_logprobs, trainer.task.verify
    monkeypatch.setattr(trainer_module, "sample", traced_sample)
    monkeypatch.setattr(trainer, "step_fns", dataclasses.replace(trainer.step_fns, ref_logprobs=traced_ref))
    monkeypatch.setattr(trainer, "task", dataclasses.replace(trainer.task, verify=traced_verify))
    out = trainer.rollout_and_update(0)
    trainer.close()
    k = config.rollout.samples_per_prompt
    # Every call dispatched first; chunks 0-2 verified before the reference is dispatched, chunk 3 after.
    assert events == ["sample"] * 4 + [f"verify {k}"] * 3 + ["reference", f"verify {k}"]
    # Each row verified once, in row order: the texts the whole batch decodes to.
    texts = [t for r in rollouts for t in decode_responses(trainer.tokenizer, r)]
    assert verified == texts
    scalars = out["scalars"]
    assert scalars["verify_overlapped_s"] >= 0 and np.isfinite(scalars["reward/task"])
