"""config.rollout.chunk_prompts="auto" (sharpjax/plan/chunks.py): the largest sampler call that fits
the plan's target, monotone in the device's memory, one call when the whole batch fits, and a
clear error when even one prompt per call does not."""

import math

import pytest

from sharpjax.errors import ConfigError
from sharpjax.plan import GiB, plan_run, preflight_run
from sharpjax.plan.chunks import choose_chunk, chunk_candidates
from tests.test_plan import tiny_run

# A long budget and many samples: the rollout's KV cache grows with the prompts per call.
LONG = dict(prompts_per_step=8, samples_per_prompt=8, max_total_length=4096, prompt_buckets=(64,))


def _run(tmp_path, chunk="auto", memory_bytes=None, **plan):
    plan = dict(target="h100x1", method="analytic", **plan)
    if memory_bytes is not None:
        plan["device_memory_gb"] = memory_bytes / GiB
    return tiny_run(tmp_path, rollout=dict(LONG, chunk_prompts=chunk), plan=plan)


def _rollout_peaks(tmp_path) -> dict[int, int]:
    """The rollout program's planned peak at each fixed chunk."""
    return {c: next(p for p in plan_run(_run(tmp_path, c), "h100x1", method="analytic").programs
                    if p.name == "rollout").peak_bytes for c in (1, 2, 4, 8)}


def test_candidates_divide_the_step_and_the_mesh(tmp_path):
    run = _run(tmp_path)
    assert chunk_candidates(run, 1) == [8, 4, 2, 1]
    sharded = tiny_run(tmp_path, rollout=dict(LONG, chunk_prompts="auto"), mesh=dict(data=-1, fsdp=2, tensor=1))
    assert chunk_candidates(sharded, 2) == [8, 4, 2]  # the sampler shards a call's prompts over data x fsdp


def test_auto_picks_the_largest_chunk_that_fits_monotone_in_memory(tmp_path):
    peaks = _rollout_peaks(tmp_path)
    assert peaks[1] < peaks[2] < peaks[4] < peaks[8]  # the premise: a larger call holds more
    chosen = []
    for c in (1, 2, 4, 8):
        just = math.ceil(peaks[c] / 0.9) + 1  # `c` fits, anything larger is over; then halfway to the next
        for memory in (just, just + (peaks.get(2 * c, peaks[c]) - peaks[c]) // 2):
            choice = choose_chunk(_run(tmp_path), "h100x1", method="analytic", memory_bytes=memory)
            expected = max(k for k, b in peaks.items() if b <= 0.9 * memory)
            assert choice.chunk == expected
            # Largest first; the ones after the chosen chunk are not planned.
            assert [k for k, _ in choice.peaks] == [k for k in (8, 4, 2, 1) if k >= expected]
            assert dict(choice.peaks)[expected] == peaks[expected]
            chosen.append((memory, choice.chunk))
    chosen.sort()
    assert [c for _, c in chosen] == sorted(c for _, c in chosen)  # more memory never picks a smaller call


def test_auto_resolves_in_the_launcher_and_the_plan(tmp_path):
    peaks = _rollout_peaks(tmp_path)
    # The whole batch fits (an H100's 80 GB): one sampler call, the config's None.
    resolved, summary = preflight_run(_run(tmp_path))
    assert resolved.rollout.chunk_prompts is None
    first = summary.splitlines()[0]
    assert first.startswith("chunk_prompts: auto -> 8 (1 sampler call a step; rollout peak ")
    assert "analytic plan, h100x1: rollout peak per chunk 8 " in first and "limit 90%" in first
    assert plan_run(_run(tmp_path), "h100x1", method="analytic").shapes.rollout_calls == 1
    # Room for two prompts per call: four calls, in the plan too.
    memory = math.ceil(peaks[2] / 0.9) + 1
    plan = plan_run(_run(tmp_path, memory_bytes=memory), "h100x1", method="analytic", memory_bytes=memory)
    assert plan.shapes.prompts_per_call == 2 and plan.shapes.rollout_calls == 4
    # No plan (no target, no GPU here): every prompt in one call.
    resolved, summary = preflight_run(tiny_run(tmp_path, rollout=dict(LONG, chunk_prompts="auto")))
    assert resolved.rollout.chunk_prompts is None
    assert summary.splitlines()[0] == "chunk_prompts: auto -> 8 (one sampler call: no plan)"


def test_auto_when_nothing_fits_names_the_knobs(tmp_path):
    peaks = _rollout_peaks(tmp_path)
    with pytest.raises(ConfigError) as e:
        preflight_run(_run(tmp_path, memory_bytes=peaks[1]))  # even one prompt per call is over 90%
    msg = str(e.value)
    assert msg.startswith("config.rollout.chunk_prompts='auto': no chunk fits on h100x1: even 1 prompt(s) per "
                          "sampler call need ")
    assert "lower config.rollout.max_total_length (now 4096)" in msg and "\n" not in msg


def test_config_accepts_auto_and_integers(tmp_path):
    assert _run(tmp_path).rollout.chunk_prompts == "auto"
    assert _run(tmp_path, 4).rollout.chunk_prompts == 4
    assert _run(tmp_path, "4").rollout.chunk_prompts == 4  # --config.rollout.chunk_prompts=4
    with pytest.raises(ConfigError, match="chunk_prompts='big' must be one of: int or 'auto'"):
        _run(tmp_path, "big")
    with pytest.raises(ConfigError, match="chunk_prompts=3 must divide"):
        _run(tmp_path, 3)


def test_the_paper_configs_use_auto():
    from sharpjax.configs.paper import HARDWARE, paper_config

    for model, targets in HARDWARE.items():
        for target in targets:
            assert paper_config(model, target=target).rollout.chunk_prompts == "auto"
