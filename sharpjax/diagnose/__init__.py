"""How much of an RL run's gain is sharpening the base? `python -m sharpjax.diagnose --base DIR --policy DIR`.

The paper's question (does RL improve reasoning by sharpening the base model's distribution, or by
learning from the task reward?) asked of any pair of models: the base and a post-trained policy are
sampled n times per problem through the one evaluation harness (`sharpjax.eval.harness.evaluate`), the
policy's responses are scored by the base (`sharpjax.rollout.scoring.score_tokens`), the base is sharpened
at inference time (temperature 1/alpha, power sampling, `sharpjax.rollout.power`), and the measurements
(`sharpjax.diagnose.metrics`) go into report.md, report.json and PNGs (`sharpjax.diagnose.report`).

    metrics   pass@k / maj@k curves and crossings, coverage, majority agreement, likelihood shift
    report    the summary sentences, report.md, report.json, figures
    __main__  the command: arguments, sampling, scoring, ETA
"""
