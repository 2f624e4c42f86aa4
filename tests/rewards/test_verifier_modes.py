"""The two verifier modes (issue 16): "boxed" (ours) and "math_verify" (the paper's reward).

"math_verify" must be NeMo RL's `hf_math_verify`, the authors' code: checked item by item
against `math_verify.metric.math_metric` configured and called as NeMo RL does (gold
`"\\boxed{" + ground_truth + "}"` with LaTeX extraction, the whole response with expression
and LaTeX extraction, an exception scoring 0). The modes must differ where they should.
"""

from __future__ import annotations

import warnings

import pytest

from sharpjax.rewards import VERIFIERS, VerifierPool, VerifyReason, verify_batch, verify_one
from tests.rewards.test_math import CASES


def _nemo_hf_math_verify(response: str, ground_truth: str) -> float:
    """The reference: NeMo RL's HFVerifyWorker.verify for one item (math_verify_impl=
    "hf_math_verify"), rebuilt from math-verify's public API."""
    from math_verify.errors import TimeoutException
    from math_verify.metric import math_metric
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    verify_func = math_metric(
        gold_extraction_target=(LatexExtractionConfig(),),
        pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score, _ = verify_func(["\\boxed{" + ground_truth + "}"], [response])
        return float(score)
    except (Exception, TimeoutException):
        return 0.0


# Whole responses (not only boxes): what the paper's extraction reads differently from ours.
RESPONSES = [
    ("The answer is 5.", "5"),
    ("The answer is $\\frac{1}{2}$.", "0.5"),
    ("So we get 12 apples and 5 pears, 17 fruits in total.", "17"),
    ("First $x = 3$, then $y = 4$. Final: $\\boxed{7}$", "7"),
    ("$\\boxed{3}$ was a mistake; the answer is $\\boxed{4}$.", "4"),
    ("$\\boxed{3}$ was a mistake; the answer is $\\boxed{4}$.", "3"),
    ("\\boxed{3.83 \\times 10^{35}}", "3.83e35"),
    ("\\boxed{3.83e35}", "3.83e35"),
    ("\\boxed{2.88 \\times 10^{-18}}", "2.88e-19"),
    ("\\boxed{\\textbf{(073)}}", "73"),
    ("No answer here.", "1"),
    ("", "1"),
]


def test_math_verify_mode_is_nemo_rl_hf_math_verify():
    items = [(f"So the answer is $\\boxed{{{a}}}$.", r) for a, r, _ in CASES] + RESPONSES
    ours = [verify_one(resp, ref, verifier="math_verify", timeout_s=10.0).score for resp, ref in items]
    nemo = [_nemo_hf_math_verify(resp, ref) for resp, ref in items]
    differ = [(items[k], ours[k], nemo[k]) for k in range(len(items)) if ours[k] != nemo[k]]
    assert not differ, differ
    # The comparison is not vacuous: both accept and reject.
    assert 0 < sum(nemo) < len(nemo)


@pytest.mark.parametrize(
    "response, reference, boxed, paper",
    [
        # An unboxed final answer: only the paper's whole-response extraction finds it.
        ("The answer is 5", "5", 0.0, 1.0),
        ("Therefore $x = \\frac{1}{2}$", "0.5", 0.0, 1.0),
        # Both read a box.
        ("so \\boxed{5}", "5", 1.0, 1.0),
        ("so \\boxed{6}", "5", 0.0, 0.0),
        # The authors' gold handling: `\boxed{3.83e35}` is LaTeX, where e is a variable, so a
        # LaTeX power of ten does not match a code-style reference; ours reads it as a number.
        ("\\boxed{3.83 \\times 10^{35}}", "3.83e35", 1.0, 0.0),
        # math-verify compares to 6 decimal places; ours also checks tiny numbers relatively.
        ("\\boxed{2.88 \\times 10^{-18}}", "2.88 \\times 10^{-19}", 0.0, 1.0),
    ],
)
def test_modes_differ_where_they_should(response, reference, boxed, paper):
    assert verify_one(response, reference, verifier="boxed").score == boxed
    assert verify_one(response, reference, verifier="math_verify").score == paper
    with VerifierPool(1) as pool:
        got = [
            pool.verify_batch([response], [reference], verifier=v)[0].score for v in VERIFIERS
        ]
    assert got == [boxed, paper]


def test_math_verify_mode_reports_the_answer_it_read():
    res = verify_one("We find the answer is $\\frac{1}{2}$.", "0.5", verifier="math_verify")
    assert (res.score, res.reason) == (1.0, VerifyReason.CORRECT)
    assert res.extracted == "\\frac{1}{2}" and res.canonical == "1/2"
    res = verify_one("No answer here.", "1", verifier="math_verify")
    assert (res.score, res.reason, res.extracted) == (0.0, VerifyReason.NO_ANSWER, None)


def test_mode_arguments_are_checked():
    with pytest.raises(ValueError, match="verifier='nope'"):
        verify_one("\\boxed{1}", "1", verifier="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="applies to verifier='boxed' only"):
        verify_batch(["x"], ["1"], verifier="math_verify", fallback="last_number", num_workers=0)


def test_config_field_validates_and_reaches_the_score(monkeypatch):
    import sharpjax.data
    from sharpjax import tasks
    from sharpjax.errors import ConfigError
    from sharpjax.train.config import RunConfig

    assert RunConfig.from_config_dict({"model_dir": "m"}).data.verifier == "boxed"
    run = RunConfig.from_config_dict({"model_dir": "m", "data": {"verifier": "math_verify"}})
    assert run.data.verifier == "math_verify"
    with pytest.raises(ConfigError, match=r"config\.data\.verifier='boxd'"):
        RunConfig.from_config_dict({"model_dir": "m", "data": {"verifier": "boxd"}})
    monkeypatch.setattr(sharpjax.data, "load_dataset", lambda *args, **kwargs: [])  # no data files needed
    scores = []
    for verifier in VERIFIERS:
        task = tasks.build_task(RunConfig.from_config_dict({"model_dir": "m", "data": {"verifier": verifier}}), None)
        scores.append(task.score(["The answer is 5"], ["5"])[0])
    assert scores == [0.0, 1.0]


def test_paper_runs_and_eval_cli_default_to_the_papers_verifier():
    from experiments.rl_math import get_config
    from sharpjax.eval.__main__ import _parser
    from sharpjax.train.config import RunConfig

    for arg in ("llama3b:task", "qwen3_4b:power-a2"):
        assert RunConfig.from_config_dict(get_config(arg)).data.verifier == "math_verify"
    assert _parser().parse_args(["--model", "m"]).verifier == "math_verify"
    assert _parser().parse_args(["--model", "m", "--verifier", "boxed"]).verifier == "boxed"
