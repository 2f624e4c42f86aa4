"""Does FSDP split the work? The plan's programs compiled for N devices, per device, against N = 1.

For each program (rollout, scoring, train_step) compiled over a mesh of N devices (the run's
mesh rule: batch rows over data x fsdp, weights over fsdp) at the same global batch, this reads
from the compiled per-device program:

- `flops`: XLA's cost analysis of the partitioned module;
- `dot_flops`: 2 x output elements x contracted size of every dot / cuBLAS gemm in the
  per-device HLO, each multiplied by the trip count of the loops around it (the layer scan,
  the micro-batch scan, the decode loop), so it is a whole step's matmul work;
- `temp_bytes`: XLA's buffer assignment for temporaries (activations, gathered weights);
- `collectives`: bytes per step (trip counts included) of all-gather, reduce-scatter,
  all-reduce, all-to-all and collective-permute, by kind: the operand and the result size.

`worksplit(...)` returns one `Split` per (program, N); `table(...)` prints the ratios to N = 1.
Perfect splitting is flops(N) / flops(1) = 1/N; what may legitimately stay replicated is small
(norms, the loss's per-row reductions, the optimizer's scalars), and collectives add no dots.

Command (compile-only GPU target, needs the jax-cuda12 plugin; see ../shared/tools/aot):
    python -m sharpjax.plan.worksplit --config experiments/rl_math.py:llama3b:task:h100x4 \
        --counts 1,2,4 --programs train_step
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import re

from sharpjax.rollout.hlo import DTYPE_BYTES, parse_computations
from sharpjax.rollout.hlo import SHAPE as _SHAPE

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")


def _shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _SHAPE.findall(text)]


def _nbytes(shapes) -> int:
    return sum(DTYPE_BYTES[d] * math.prod(s) for d, s in shapes)


def _split_operands(rest: str) -> tuple[str, str]:
    """(operands, attributes) of an instruction's text after its opcode's '('."""
    depth = 1
    for i, c in enumerate(rest):
        depth += c == "("
        depth -= c == ")"
        if depth == 0:
            return rest[:i], rest[i + 1:]
    return rest, ""


def _dims(attrs: str, key: str) -> tuple[int, ...]:
    m = re.search(key + r"=\{([\d,]*)\}", attrs)
    if m:
        return tuple(int(x) for x in m.group(1).split(",") if x)
    m = re.search('"' + key.replace("_dims", "_dimensions") + r'":\[([^\]]*)\]', attrs)  # cuBLAS backend_config
    return tuple(int(x.strip('" ')) for x in m.group(1).split(",") if x.strip('" ')) if m else ()


@dataclasses.dataclass
class HloStats:
    dot_flops: float = 0.0
    collectives: dict = dataclasses.field(default_factory=dict)  # kind -> [count, operand bytes, result bytes]
    largest_dots: list = dataclasses.field(default_factory=list)  # (output bytes, text) of the biggest dots


def hlo_stats(text: str) -> HloStats:
    """Dot FLOPs and collective bytes of a per-device HLO module, loops' trip counts included.

    The module's computations and its ENTRY come from `sharpjax.rollout.hlo.parse_computations` (the one
    HLO reader); this reads their instructions' types, operands and attributes.
    """
    bodies, entry = parse_computations(text)
    comps: dict[str, list[tuple[str, str, str, str]]] = {name: [] for name in bodies}  # (op, type, operands, attrs)
    types: dict[str, str] = {}  # instruction name -> its result type (names are unique in a module)
    for name, lines in bodies.items():
        for line in lines:
            m = _INSTR.match(line)
            if m:
                operands, attrs = _split_operands(m.group(4))
                comps[name].append((m.group(3), m.group(2), operands, attrs))
                types[m.group(1)] = m.group(2)
    # How many times each computation runs per call of the entry (while bodies x trip count).
    mult: dict[str, float] = collections.defaultdict(float)

    def visit(name: str, times: float, depth: int = 0):
        if name not in comps or depth > 64:
            return
        mult[name] += times
        for op, _, _, attrs in comps[name]:
            trips = 1
            if op == "while":
                t = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
                trips = int(t.group(1)) if t else 1
            for key, callee in re.findall(r"\b(body|condition|calls|to_apply|branch_computations|"
                                          r"true_computation|false_computation)=\{?%?([\w.\-]+)", attrs):
                if key in ("to_apply",) and op not in ("call", "map"):
                    continue  # reductions' scalar computations
                visit(callee, times * (trips if key in ("body", "condition") else 1), depth + 1)

    if entry is None:
        return HloStats()
    visit(entry, 1.0)

    def operand_shapes(operands: str):
        if _SHAPE.search(operands):  # printed inline (some XLA versions)
            return _shapes(operands)
        return [sh for name in re.findall(r"%([\w.\-]+)", operands) for sh in _shapes(types.get(name, ""))]

    out = HloStats()
    for name, instrs in comps.items():
        times = mult.get(name, 0.0)
        if not times:
            continue
        for op, result, operands, attrs in instrs:
            gemm = op == "custom-call" and "cublas" in attrs and "gemm" in attrs
            if op == "dot" or gemm:
                ins, outs = operand_shapes(operands), _shapes(result)
                if not ins or not outs:
                    continue
                lhs = ins[0][1]
                k = math.prod(lhs[d] for d in _dims(attrs, "lhs_contracting_dims") if d < len(lhs))
                flops = 2.0 * math.prod(outs[0][1]) * k * times
                out.dot_flops += flops
                out.largest_dots.append((_nbytes(outs[:1]), f"{result.split('{')[0]} = {op}({operands[:160]})"))
            base = op.removesuffix("-start")
            if base in COLLECTIVES and not op.endswith("-done"):
                res = _shapes(result)
                if op.endswith("-start") and len(res) > 1:  # (operands..., results...) tuple
                    res = res[len(res) // 2:]
                c = out.collectives.setdefault(base, [0, 0.0, 0.0])
                c[0] += times
                c[1] += _nbytes(operand_shapes(operands)) * times
                c[2] += _nbytes(res) * times
    out.largest_dots = sorted(out.largest_dots, reverse=True)[:6]
    return out


def collective_seconds(collectives: dict, n: int, bandwidth: float) -> float:
    """Ring-algorithm time of the collectives at `bandwidth` bytes/s per device: each device
    sends (n-1)/n of an all-gather's result or a reduce-scatter's operand, twice that for an
    all-reduce, and a permute's / all-to-all's operand."""
    if n <= 1:
        return 0.0
    f = (n - 1) / n
    sent = 0.0
    for kind, (_, operand, result) in collectives.items():
        ring = {"all-gather": f * result, "reduce-scatter": f * operand, "all-reduce": 2 * f * operand}
        sent += ring.get(kind, operand)
    return sent / bandwidth


@dataclasses.dataclass(frozen=True)
class Split:
    program: str
    n: int
    mesh: tuple[int, int, int]
    flops: float
    dot_flops: float
    temp_bytes: int
    argument_bytes: int
    collectives: dict
    largest_dots: tuple


@contextlib.contextmanager
def _capture_compiled(into: list):
    """Records every `Lowered.compile()` result made inside (the plan's `_aot_compile` keeps
    only the memory analysis; this reads the compiled program it built, unchanged)."""
    import jax

    original = jax.stages.Lowered.compile

    def compile_and_keep(self, *a, **k):
        compiled = original(self, *a, **k)
        into.append(compiled)
        return compiled

    jax.stages.Lowered.compile = compile_and_keep
    try:
        yield
    finally:
        jax.stages.Lowered.compile = original


def compile_split(run, model, target, n: int, program: str, devices=None, axis: str = "fsdp",
                  hlo_dir: str | None = None) -> Split:
    """`program` of `run` compiled over n devices on one mesh axis (`axis`: "fsdp" or "data"),
    the target's compile-only GPUs, or `devices` (e.g. fake CPU devices) when given."""
    import dataclasses as dc

    from sharpjax import plan as P
    from sharpjax.parallel import make_mesh, on_mesh

    sizes = dict(data=1, fsdp=1, tensor=1) | {axis: -1}
    run = dc.replace(run, mesh=dc.replace(run.mesh, **sizes))
    s = P.plan_shapes(run, model, n)
    if devices is None:
        mesh = P._target_mesh(dc.replace(target, count=n), s.mesh)
    else:
        mesh = make_mesh(*s.mesh, devices=list(devices)[:n])
    got: list = []
    # decode_attention follows target.count; keep it the same ("xla") for every n.
    sampling_target = dc.replace(target, count=max(2, n))
    with _capture_compiled(got), P._target_cudnn(target), on_mesh(mesh):
        P._aot_compile(run, model, sampling_target, s, program, mesh)
    compiled = got[-1]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    m = compiled.memory_analysis()
    text = compiled.as_text()
    if hlo_dir:
        import os

        os.makedirs(hlo_dir, exist_ok=True)
        with open(os.path.join(hlo_dir, f"{program}_{axis}{n}.hlo.txt"), "w") as f:
            f.write(text)
    stats = hlo_stats(text)
    return Split(program=program, n=n, mesh=s.mesh, flops=float((cost or {}).get("flops", 0.0)),
                 dot_flops=stats.dot_flops, temp_bytes=m.temp_size_in_bytes, argument_bytes=m.argument_size_in_bytes,
                 collectives=stats.collectives, largest_dots=tuple(stats.largest_dots))


def worksplit(run, model, target, counts=(1, 2, 4), programs=("rollout", "scoring", "train_step"),
              devices=None, log=None, axis: str = "fsdp", hlo_dir: str | None = None) -> list[Split]:
    """`compile_split` for every program and device count (N = 1 first: the reference)."""
    out = []
    for program in programs:
        for n in counts:
            out.append(compile_split(run, model, target, n, program, devices=devices, axis=axis, hlo_dir=hlo_dir))
            if log:
                log(row(out[-1], next(x for x in out if x.program == program)))
    return out


def row(x: Split, ref: Split) -> str:
    gib = 2.0**30
    coll = sum(v[2] for v in x.collectives.values()) / gib
    r = lambda a, b: f"{a / b:.3f}" if b else "-"  # noqa: E731
    return (f"| {x.program} | {x.n} | {'x'.join(map(str, x.mesh))} | {x.dot_flops / 1e9:.1f} "
            f"| {r(x.dot_flops, ref.dot_flops)} | {x.flops / 1e9:.1f} | {r(x.flops, ref.flops)} "
            f"| {x.temp_bytes / gib:.2f} | {r(x.temp_bytes, ref.temp_bytes)} | {coll:.2f} |")


HEADER = ("| program | N | mesh d x fsdp x t | dot GFLOP/device | ratio to N=1 | XLA cost GFLOP/device | ratio "
          "| temp GiB/device | ratio | collective GiB/step/device |\n|---|---|---|---|---|---|---|---|---|---|")


def table(splits: list[Split]) -> str:
    lines = [HEADER]
    for x in splits:
        lines.append(row(x, next(r for r in splits if r.program == x.program)))
    return "\n".join(lines)


def main(argv=None) -> None:
    import argparse
    import importlib.util
    import json

    from sharpjax import plan as P
    from sharpjax.train.config import RunConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--counts", default="1,2,4")
    ap.add_argument("--programs", default="rollout,scoring,train_step")
    ap.add_argument("--remat", default=None)
    ap.add_argument("--attention", default=None, help="override the model's attention (e.g. xla)")
    ap.add_argument("--axis", default="fsdp", choices=("fsdp", "data"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--hlo-dir", default=None, help="write each compiled per-device HLO there")
    a = ap.parse_args(argv)
    path, _, arg = a.config.partition(":")
    spec = importlib.util.spec_from_file_location("experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = RunConfig.from_config_dict(module.get_config(arg) if arg else module.get_config())
    if a.remat:
        run = P._with_remat(run, a.remat)
    elif run.train.remat == "auto":
        run = P._with_remat(run, "full")
    model = P.model_config_for(run)
    if a.attention:
        model = model.replace(attention=a.attention)
    elif getattr(model, "attention", None) == "auto":
        model = model.replace(attention=P.gpu_attention(model))
    target = P.parse_target(run.plan.target)
    print(HEADER, flush=True)
    splits = worksplit(run, model, target, tuple(int(c) for c in a.counts.split(",")), tuple(a.programs.split(",")),
                       log=lambda line: print(line, flush=True), axis=a.axis,
                       hlo_dir=a.hlo_dir)
    for x in splits:
        print(x.program, x.n, "largest dots:", *(f"\n   {b / 2**30:.2f} GiB {t}" for b, t in x.largest_dots[:3]))
        print("   collectives (count, operand GiB, result GiB):",
              {k: (v[0], round(v[1] / 2**30, 3), round(v[2] / 2**30, 3)) for k, v in x.collectives.items()})
    if a.json:
        with open(a.json, "w") as f:
            json.dump([dataclasses.asdict(x) for x in splits], f, indent=1, default=str)


if __name__ == "__main__":
    main()
