"""Reading compiled HLO text: its computations (and which is the ENTRY), each while loop's body, and
the slices of stacked layer weights in it.

The decode loop must not slice a layer's weight out of the stacked [L, ...] params on every step
(XLA does not hoist a lone slice out of a loop: a per-token weight copy). `tests/rollout/test_decode.py`
checks it on a CPU compile and `benchmarks/rollout.py` reports it for a GPU target; both read the HLO here,
as does `sharpjax.plan.worksplit` (the FLOPs and collectives of a per-device module): one HLO reader.
"""

from __future__ import annotations

import re

__all__ = ["COMPUTATION", "computations", "parse_computations", "stacked_weight_slices", "while_bodies"]

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
