"""The summary's directions: each component read from its own numbers, for a sharpened and a learning policy."""

from sharpjax.diagnose.report import BEYOND, NEITHER, SHARPENING, compare, summary_lines
from tests.diagnose.test_metrics import rec


def _entry(records, samples):
    import numpy as np

    from sharpjax.diagnose import metrics

    ks = [1, 2, 3, 4]
    return {"n": 4, "ks": ks, "maj_ks": ks, "pass": metrics.pass_curve(records, ks).tolist(),
            "maj": metrics.maj_curve(records, ks).tolist(), "records": records,
            "logp": np.array(samples, float), "lengths": np.full((len(records), 4), 10.0),
            "summary": {"mean_length": 10.0}, "cost_ratio": 1.0}


# The base: right but unsure on p0, p1; a wrong majority on p2 (the trap), p3 solved once in 4.
BASE = [rec("p0", "1", ["1", "1", "2", "3"]), rec("p1", "2", ["2", "2", "5", "6"]),
        rec("p2", "3", ["9", "9", "9", "3"]), rec("p3", "4", ["4", "7", "8", "9"]),
        rec("p4", "5", ["0", "0", "1", "2"])]
SHARPENED = [rec("p0", "1", ["1"] * 4), rec("p1", "2", ["2"] * 4), rec("p2", "3", ["9"] * 4),
             rec("p3", "4", ["7"] * 4), rec("p4", "5", ["0"] * 4)]
LEARNED = [rec("p0", "1", ["1"] * 4), rec("p1", "2", ["2", "2", "2", "6"]), rec("p2", "3", ["3", "3", "3", "9"]),
           rec("p3", "4", ["4", "4", "8", "9"]), rec("p4", "5", ["5", "0", "0", "1"])]


def _bench(policy_records, policy_logp):
    base = _entry(BASE, [[-10.0, -12.0, -11.0, -13.0]] * 5)
    policy = _entry(policy_records, policy_logp)
    temp = {**_entry(SHARPENED, [[0.0] * 4] * 5), "n": 2, "ks": [1, 2], "pass": [0.6, 0.6], "cost_ratio": 1.0}
    return {"n": 4, "ks": base["ks"], "models": {"base": base, "rl": policy}, "baselines": {"temp-a4": temp},
            "policies": {"rl": compare(base, policy, num_boot=200, seed=0)}}


def test_a_sharpened_policy_reads_as_sharpening():
    bench = _bench(SHARPENED, [[-5.0, -5.5, -6.0, -5.0]] * 5)  # likelier under the base than its own samples
    directions = {c: d for c, d, _ in summary_lines(bench, "rl")}
    assert directions == {"pass@k": SHARPENING, "coverage": NEITHER, "majority": SHARPENING,
                          "likelihood": SHARPENING, "baselines": SHARPENING}


def test_a_learning_policy_reads_as_beyond_sharpening():
    bench = _bench(LEARNED, [[-20.0, -22.0, -19.0, -25.0]] * 5)
    lines = summary_lines(bench, "rl")
    directions = {c: d for c, d, _ in lines}
    assert directions == {"pass@k": BEYOND, "coverage": NEITHER, "majority": BEYOND, "likelihood": BEYOND,
                          "baselines": BEYOND}
    text = dict((c, t) for c, _, t in lines)
    assert "pass@1 0.300 -> 0.650 (+35.0 points), pass@4 0.800 -> 1.000" in text["pass@k"]
    assert "the policy solves 1 problems the base never solves in 4 samples" in text["coverage"]
    # p3's base majority is a four-way tie (a quarter right): 2.75 wrong majorities; the policy keeps p4's.
    assert "on the 2.8 problems whose base majority answer is wrong, the policy's majority keeps it on 1, leaves " \
           "it for the right answer on 1.8 and for another wrong one on 0" in text["majority"]
