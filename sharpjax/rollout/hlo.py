"""Reading compiled HLO text: its computations (and which is the ENTRY), each while loop's body, and
the slices of stacked layer weights in it.

The decode loop must not slice a layer's weight out of the stacked [L, ...] params on every step
(XLA does not hoist a lone slice out of a loop: a per-token weight copy). `tests/rollout/test_decode.py`
checks it on a CPU compile and `benchmarks/rollout.py` reports it for a GPU target; both read the HLO here,
as does `sharpjax.plan.worksplit` (the FLOPs and collectives of a per-device module): one HLO reader.

`loop_launches` reads the other text a GPU compile can dump, XLA's thunk sequence (the runtime's
list of kernel launches, copies, loops and command buffers = CUDA graphs), which the HLO cannot show.
"""

from __future__ import annotations

import math
import re

__all__ = ["COMPUTATION", "DTYPE_BYTES", "SHAPE", "computations", "kernel_costs", "loop_launches",
           "parse_computations", "rematerialized", "shape_bytes", "stacked_weight_slices", "while_bodies"]

COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")  # a computation's first line: its name
_DEFINITION = re.compile(r"%([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")
_SLICE = re.compile(r"\b(slice|dynamic-slice)\(\s*%([\w.\-]+)")


def parse_computations(hlo: str) -> tuple[dict[str, list[str]], str | None]:
    """(name -> its body lines in order, the ENTRY computation's name or None) of an HLO module's text."""
    comps, entry, name, lines = {}, None, None, []
    for line in hlo.splitlines():
        match = COMPUTATION.match(line)
        if match and name is None:
            name, lines = match.group(1), []
            if line.startswith("ENTRY"):
                entry = name
        elif name is not None and line.strip() == "}":
            comps[name] = lines
            name = None
        elif name is not None:
            lines.append(line)
    return comps, entry


def computations(hlo: str) -> dict[str, str]:
    """Each computation of an HLO module's text: name -> its body lines."""
    return {name: "\n".join(lines) for name, lines in parse_computations(hlo)[0].items()}


def while_bodies(hlo: str) -> dict[str, str]:
    """Each while loop's body with every computation it calls (fusions, nested loops)."""
    comps = computations(hlo)
    bodies = {}
    for body in re.findall(r"while\(.*?body=%?([\w.\-]+)", hlo):
        seen, todo = set(), [body]
        while todo:
            c = todo.pop()
            if c in seen or c not in comps:
                continue
            seen.add(c)
            todo += [n for n in re.findall(r"%([\w.\-]+)", comps[c]) if n in comps]
        bodies[body] = "\n".join(comps[c] for c in sorted(seen))
    return bodies


def stacked_weight_slices(text: str, stacked_shapes: set[tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    """(op, operand shape) of each slice in `text` whose operand has one of `stacked_shapes`."""
    # Compiled HLO names operands without their types: resolve each name's shape.
    dims = {m.group(1): tuple(int(d) for d in m.group(2).split(",") if d) for m in _DEFINITION.finditer(text)}
    return [(m.group(1), dims[m.group(2)]) for m in _SLICE.finditer(text) if dims.get(m.group(2)) in stacked_shapes]


# ---- per-kernel costs of one loop iteration (benchmarks/rollout.py --aot-breakdown) ----------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*?)\)(.*)$")
# Bytes per element of each HLO array type; `SHAPE` matches one array shape ("f32[64,128]").
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "f8e4m3fn": 1, "f8e5m2": 1}
SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
# Ops that launch nothing on a GPU (views, tuple plumbing, constants).
_NO_KERNEL = {"get-tuple-element", "bitcast", "tuple", "parameter", "constant", "after-all", "opt-barrier"}


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string, tuples summed: 'f32[64,128]{1,0}' -> 32768."""
    return sum(DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
               for dtype, dims in SHAPE.findall(shape))


def _raw_computations(hlo: str) -> dict[str, str]:
    """Each non-entry computation's full text (header and closing brace included)."""
    comps, entry = parse_computations(hlo)
    headers = {m.group(1): line for line in hlo.splitlines() if (m := COMPUTATION.match(line))}
    return {name: "\n".join([headers[name], *lines, "}"]) for name, lines in comps.items() if name != entry}


def _called(raw: dict[str, str], text: str) -> list[str]:
    """The computations `text` calls, transitively, callees first (the order HLO text needs)."""
    order, seen = [], set()

    def visit(t):
        for n in re.findall(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%([\w.\-]+)", t):
            if n in raw and n not in seen:
                seen.add(n)
                visit(raw[n])
                order.append(n)

    visit(text)
    return order


def kernel_costs(hlo: str, computation: str, client) -> list[dict]:
    """One row per kernel that `computation` (e.g. a while body) launches, in program order.

    Each row: name, op ("fusion", "custom-call", "copy", ...), kind (the fusion kind, or the
    custom call's target), calls (the fused computation), out_bytes (the output's shape),
    operand_bytes (the operands' shapes, each read in full), sources (the instruction that
    made each operand, through bitcasts and tuple reads: a kernel of this computation, or
    "<parameter>[<index>]" for loop-carried and loop-invariant values), shape / operand_shapes and
    op_name (the JAX source op, from the metadata), and XLA's HloCostAnalysis of the
    instruction alone (`flops`, `bytes`: it knows in-place updates and reads of slices), run on
    `client` (a CPU client: the compile-only GPU target has no cost analysis of its own). A
    custom call (a Pallas/Triton kernel) is opaque to it: 0 FLOPs and 0 bytes.

    `hbm_bytes` is the estimate this module reports: XLA's bytes, less the repeats of a buffer
    passed twice (through a tuple, say), and a loop fusion that gathers or slices reads only
    what it gathers (XLA counts an embedding row gather as a read of the whole table).
    """
    from jax._src.lib import _jax
    from jaxlib import _hlo

    raw = _raw_computations(hlo)
    shapes, producer, elements, rows = {}, {}, {}, []
    for line in computations(hlo)[computation].splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, op, args, rest = match.groups()
        shapes[name] = shape
        operands = re.findall(r"%([\w.\-]+)", args)
        # Through views and tuples: the kernel (or loop parameter) that made each value.
        producer[name] = name
        if op == "bitcast":
            producer[name] = producer.get(operands[0], operands[0])
        elif op == "tuple":
            elements[name] = [producer.get(o, o) for o in operands]
        elif op == "get-tuple-element":
            index = int(re.search(r"index=(\d+)", rest).group(1))
            base = producer.get(operands[0], operands[0])
            producer[name] = elements[base][index] if base in elements else f"{base}[{index}]"
        if op in _NO_KERNEL:
            continue
        rest = re.sub(r",\s*control-predecessors=\{[^}]*\}", "", rest)
        called = re.search(r"calls=%([\w.\-]+)", rest)
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        kind = re.search(r"kind=(\w+)", rest)
        params = [f"  p{i} = {shapes[o]} parameter({i})" for i, o in enumerate(operands)]
        body = f"  ROOT r = {shape} {op}({', '.join(f'p{i}' for i in range(len(operands)))}){rest}"
        lib = "\n\n".join(raw[c] for c in _called(raw, rest))
        module = f"HloModule one\n\n{lib}\n\nENTRY e {{\n" + "\n".join(params) + "\n" + body + "\n}\n"
        cost = _jax.hlo_module_cost_analysis(client, _hlo.hlo_module_from_text(module))
        out_bytes = shape_bytes(shape)
        operand_bytes = [shape_bytes(shapes[o]) for o in operands]
        hbm = cost.get("bytes accessed", 0.0)
        sources = [producer.get(o, o) for o in operands]
        # One buffer passed twice (e.g. through a tuple) is read once: XLA counts it per operand.
        hbm -= sum(b for i, b in enumerate(operand_bytes) if sources[i] in sources[:i])
        fused = raw.get(called.group(1), "") if called else ""
        if op == "fusion" and kind and kind.group(1) == "kLoop" and re.search(r"\b(gather|dynamic-slice)\(", fused):
            update = re.search(r"dynamic-update-slice\(%[\w.\-]+, %([\w.\-]+)", fused)
            written = out_bytes
            if update:  # an in-place update writes only its update
                written = shape_bytes(re.search(rf"%{re.escape(update.group(1))} = (\S+)", fused).group(1))
            hbm = written + sum(min(b, written) for b in operand_bytes if b != out_bytes or not update)
        op_name = re.search(r'op_name="([^"]*)"', rest)
        rows.append({
            "name": name, "shape": shape, "operand_shapes": [shapes[o] for o in operands],
            "op_name": op_name.group(1) if op_name else "", "op": op,
            "kind": kind.group(1) if kind else (target.group(1) if target else ""),
            "calls": called.group(1) if called else "", "out_bytes": out_bytes, "operand_bytes": operand_bytes,
            "sources": sources,
            "flops": cost.get("flops", 0.0), "bytes": cost.get("bytes accessed", 0.0), "hbm_bytes": hbm,
        })
    return rows


_REMAT = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]*\.remat[\w.\-]*)\s*=")
_GEMM = re.compile(r"^(gemm_fusion|cublas|triton_gemm|dot)")


def rematerialized(hlo: str) -> dict[str, int]:
    """What XLA's own HLO rematerialization recomputed in a compiled module: {"ops": instructions,
    "gemms": of them matrix multiplies}.

    When a program does not fit XLA's memory limit for the device, that pass clones instructions
    next to their late uses (named `<name>.remat`, `.remat2`, ...) to shorten live ranges. A
    cloned GEMM is recomputed work the remat policy did not ask for: a policy that needs it to
    fit costs more compute than its name says (3B, one H200, 256 rows x 3,072 tokens, remat
    "dots" at 16 rows a micro-batch: 67 clones, 16 of them GEMMs, and 22.3 PFLOP of GEMMs a step
    against 19.1 for "full"; `benchmarks/results/remat_xla_h200_2026-12-05/`).
    """
    ops = gemms = 0
    for line in hlo.splitlines():
        if match := _REMAT.match(line):
            ops += 1
            gemms += bool(_GEMM.match(match.group(1)) or "__cublas$" in line)
    return {"ops": ops, "gemms": gemms}


# ---- XLA:GPU thunk sequences (`<module>.thunk_sequence_after_thunk_passes.txt` under xla_dump_to) ----

_THUNK = re.compile(r"^(\s*)\d+:\s+(k\w+)")
# Thunks that hold others, not work of their own: a loop, a CUDA graph, a sequence, a sliced fusion's
# wrapper (its copy is listed inside it).
_CONTAINERS = {"kWhile", "kCommandBuffer", "kSequential", "kDynamicSliceFusion", "kConditional"}


def loop_launches(thunks: str) -> list[dict]:
    """For each while loop of an XLA:GPU thunk sequence: the launches of one iteration of its body
    and how many of them run inside command buffers (CUDA graphs: the host launches one graph per
    iteration instead of each kernel).

    Args:
      thunks: the text XLA writes as `*.thunk_sequence_after_thunk_passes.txt` with `xla_dump_to`
        (also on a compile-only GPU target).

    Returns:
      One dict per kWhile, in order: `launches` (kernels, GEMMs and copies of one body iteration,
      nested loops' bodies counted once), `in_graphs` (of those, inside a kCommandBuffer), and
      `graphs` (command buffers in the body, a nested loop's included).
    """
    lines = thunks.splitlines()
    parsed = [(len(m.group(1)), m.group(2), i) for i, line in enumerate(lines) if (m := _THUNK.match(line))]
    loops = []
    for index, (indent, kind, line_no) in enumerate(parsed):
        if kind != "kWhile":
            continue
        after = parsed[index + 1:]
        inside = after[:next((j for j, t in enumerate(after) if t[0] <= indent), len(after))]
        # The loop's condition is listed first, then "body:".
        body_line = next(i for i in range(line_no + 1, len(lines)) if lines[i].strip() == "body:")
        body = [t for t in inside if t[2] > body_line]
        launches = in_graphs = graphs = 0
        graph_indents = []  # the indents of the command buffers enclosing the current thunk
        for t_indent, t_kind, _ in body:
            while graph_indents and t_indent <= graph_indents[-1]:
                graph_indents.pop()
            if t_kind == "kCommandBuffer":
                graphs += 1
                graph_indents.append(t_indent)
            elif t_kind not in _CONTAINERS:
                launches += 1
                in_graphs += bool(graph_indents)
        loops.append({"launches": launches, "in_graphs": in_graphs, "graphs": graphs})
    return loops
