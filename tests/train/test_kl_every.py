"""train.kl_every: the reference is scored (and KL(pi || base) logged) every N steps when only logged."""

import pytest

from sharpjax.train.config import ConfigError, RunConfig
from sharpjax.train.metrics import read_metrics
from sharpjax.train.trainer import train
from tests.tiny import make_tiny_model, tiny_config


def test_kl_every_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="config.train.kl_every"):
        RunConfig.from_config_dict(tiny_config(str(tmp_path), train__kl_every=0))


@pytest.mark.slow
@pytest.mark.guard  # CI's second stage: slow, so not in the fast suite, but run
def test_kl_every_logs_kl_on_every_nth_step_only(tmp_path):
    model_dir = make_tiny_model(str(tmp_path / "model"))
    # The task reward needs no reference: it is scored only to log the KL, on steps 0 and 2.
    config = RunConfig.from_config_dict(tiny_config(model_dir, reward="task", train__kl_every=2, eval__every=0,
                                                    train__export_final=False))
    assert not config.reward.needs_ref_logprobs and config.train.score_reference_always
    train(config, str(tmp_path / "run"), progress=False)
    logged = {r["step"]: r for r in read_metrics(str(tmp_path / "run")) if "reward/reward" in r}
    assert sorted(logged) == [1, 2, 3, 4]  # logged after step index 0, 1, 2, 3
    for step, record in logged.items():
        has_kl = step in (1, 3)
        for key in ("kl_to_base", "kl", "reward/ref_logp_sum"):
            assert (key in record) == has_kl, (step, key)
