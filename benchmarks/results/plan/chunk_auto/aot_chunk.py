"""How llama3b_h200x1.json was made (issue 28 item 2): chunk_prompts="auto" on the AOT plan, and
the rollout's roofline time per chunk. JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1
PYTHONPATH=.:/tmp/aot-site python benchmarks/results/plan/chunk_auto/aot_chunk.py"""

import json
import time

from sharpjax.configs.paper import paper_config
from sharpjax.plan import (
    GiB,
    _analytic_programs,
    _phases,
    _with_remat,
    aot_available,
    model_config_for,
    parse_target,
    plan_shapes,
)
from sharpjax.plan.chunks import choose_chunk, with_chunk
from sharpjax.train.config import RunConfig

print("aot", aot_available(), flush=True)
run = RunConfig.from_config_dict(paper_config("llama3b", target="h200x1"))
target = parse_target("h200x1")
model = model_config_for(run)
t0 = time.time()
choice = choose_chunk(run, target, method="aot", max_fraction=0.9)
print(choice.summary(), f"({time.time() - t0:.0f} s)", flush=True)
out = {"summary": choice.summary(), "peaks_gib": {c: b / GiB for c, b in choice.peaks}}
for chunk in (16, 32):
    r = _with_remat(with_chunk(run, chunk), "dots")
    s = plan_shapes(r, model, 1)
    gpu = target.gpu
    t = s.rollout_calls * sum(n * max(f / gpu.peak_flops, b / gpu.hbm_bandwidth)
                              for f, b, n in _phases("rollout", r, model, s))
    an = next(p for p in _analytic_programs(r, model, s) if p.name == "rollout")
    out[f"chunk{chunk}"] = {"calls": s.rollout_calls, "rollout_roofline_s": t, "analytic_peak_gib": an.peak_bytes / GiB}
    print(chunk, out[f"chunk{chunk}"], flush=True)
with open("/tmp/wt28/aot_chunk.json", "w") as f:
    json.dump(out, f, indent=1)
