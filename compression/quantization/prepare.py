"""Graph preparation every mode shares, so the quantizer sees every weight and emits a loadable model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from compression.graph_names import outer_references
from compression.model_info import iter_nodes
from compression.quantization.graph_prep import gemm_to_matmul, lift_constants
from compression.quantization.opset import PER_CHANNEL_MIN_OPSET, ensure_opset
from compression.quantization.preprocess import preprocess

Report = Callable[[str], None]


@dataclass
class Prepared:
    """The graph the quantizer sees. `extra_outputs` were added by `prepare` and leave again in `compact`."""

    path: Path
    per_channel_ok: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    extra_outputs: list[str] = field(default_factory=list)


def prepare(
    src: Path,
    work: Path,
    report: Report,
    *,
    per_channel: bool = False,
    optimize: bool = True,
    rewrite_gemm: bool = False,
    expose_outer_references: bool = False,
    min_constant_elements: int = 16,
) -> Prepared:
    """Lift Constant weights, upgrade the opset for per-channel, pre-process, optionally rewrite Gemm.

    `expose_outer_references` makes the values If/Loop/Scan bodies read from the main graph graph outputs
    for the quantizer's sake: onnxruntime's QOperator quantizer renames a quantized node's output and only
    re-creates the float value for graph outputs, so a body reading it would be left with a dangling name.
    """
    work.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = {}
    model = ir.load(src)
    lifted = lift_constants(model, min_constant_elements)
    path = src
    if lifted:
        report(f"turned {lifted} Constant node(s) into initializers so their weights get quantized")
        details["constants_lifted"] = lifted
        path = work / "lifted.onnx"
        ir.save(model, path)
    per_channel_ok = True
    if per_channel:
        path, per_channel_ok = ensure_opset(path, work / "opset.onnx", PER_CHANNEL_MIN_OPSET, report)
        if not per_channel_ok:
            report("falling back to per-tensor quantization: the model cannot be upgraded to opset 13")
            details["per_channel_fallback"] = "opset upgrade failed; per-tensor used"
    if optimize:
        pre = preprocess(path, work / "preprocessed.onnx", report)
        details["preprocessed"] = pre != path
        path = pre
    if rewrite_gemm:
        model = ir.load(path)
        rewritten = gemm_to_matmul(model)
        if rewritten:
            report(f"rewrote {rewritten} Gemm node(s) as MatMul+Add so their weights get int8 kernels")
            details["gemm_rewritten"] = rewritten
            path = work / "gemm_rewritten.onnx"
            ir.save(model, path)
    named = name_nodes(path, work / "named.onnx")
    if named:
        details["nodes_named"] = named
        path = work / "named.onnx"
    extra: list[str] = []
    if expose_outer_references:
        extra = expose_body_inputs(path, work / "exposed.onnx")
        if extra:
            path = work / "exposed.onnx"
    return Prepared(path=path, per_channel_ok=per_channel_ok, details=details, extra_outputs=extra)


def expose_body_inputs(src: Path, dst: Path) -> list[str]:
    """Add the node outputs that subgraph bodies read from the main graph as graph outputs; returns them."""
    model = onnx.load(str(src))
    graph = model.graph
    produced = {name for node in graph.node for name in node.output if name}
    present = {value.name for value in graph.output}
    added = sorted((outer_references(graph) & produced) - present)
    if not added:
        return []
    known = {value.name: value for value in graph.value_info}
    for name in added:
        graph.output.append(known.get(name) or onnx.ValueInfoProto(name=name))
    onnx.save(model, str(dst))
    return added


def name_nodes(src: Path, dst: Path) -> int:
    """Give unnamed nodes unique names: exclusion lists and sensitivity tables refer to nodes by name.

    Optimisers and some exporters leave names empty (HardSwish split into HardSigmoid and Mul),
    and an unnamed node could never be kept in float.
    """
    model = onnx.load(str(src))
    nodes = list(iter_nodes(model.graph))
    taken = {node.name for node in nodes if node.name}
    count = 0
    for index, node in enumerate(nodes):
        if node.name:
            continue
        name = f"{node.op_type}_n{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        count += 1
    if count:
        onnx.save(model, str(dst))
    return count
