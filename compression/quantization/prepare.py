"""Graph preparation every mode shares, so the quantizer sees every weight and emits a loadable model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from compression.errors import CompressionError, JobInterrupted
from compression.graph_names import outer_references
from compression.model_info import default_opset, iter_nodes
from compression.quantization.graph_prep import flatten_gemm_biases, gemm_to_matmul, lift_constants
from compression.quantization.opset import PER_CHANNEL_MIN_OPSET, ensure_opset
from compression.quantization.preprocess import preprocess

Report = Callable[[str], None]


class GraphPath(StrEnum):
    """How much of our preparation the graph handed to onnxruntime's quantizer went through."""

    PREPARED = "prepared"  # Constants lifted, opset upgraded, quant_pre_process, Gemm rewrites
    WITHOUT_PREPROCESSING = "without_preprocessing"  # the same without quant_pre_process and Gemm rewrites
    RAW = "raw_graph"  # the input graph as uploaded (unnamed nodes named)
    RAW_PER_TENSOR = "raw_graph_per_tensor"  # the input graph, per-tensor weights (onnxruntime's defaults)


FALLBACK_ORDER = list(GraphPath)
GRAPH_LABELS = {
    GraphPath.PREPARED: "prepared graph",
    GraphPath.WITHOUT_PREPROCESSING: "graph without quant_pre_process",
    GraphPath.RAW: "graph as uploaded",
    GraphPath.RAW_PER_TENSOR: "graph as uploaded with per-tensor weights",
}


@dataclass
class Prepared:
    """The graph the quantizer sees. `extra_outputs` were added by `prepare` and leave again in `compact`.

    `source` and `options` let `fall_back` rebuild it with less preparation after the quantizer crashed.
    """

    path: Path
    per_channel_ok: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    extra_outputs: list[str] = field(default_factory=list)
    source: Path | None = None
    work: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    graph_path: GraphPath = GraphPath.PREPARED


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
    model = ir.load(path)
    flattened = flatten_gemm_biases(model)
    if flattened:
        details["gemm_biases_flattened"] = flattened
    rewritten = gemm_to_matmul(model) if rewrite_gemm else 0
    if rewritten:
        report(f"rewrote {rewritten} Gemm node(s) as MatMul+Add so their weights get int8 kernels")
        details["gemm_rewritten"] = rewritten
    if flattened or rewritten:
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
    options = {
        "per_channel": per_channel,
        "optimize": optimize,
        "rewrite_gemm": rewrite_gemm,
        "expose_outer_references": expose_outer_references,
        "min_constant_elements": min_constant_elements,
    }
    return Prepared(
        path=path,
        per_channel_ok=per_channel_ok,
        details=details,
        extra_outputs=extra,
        source=src,
        work=work,
        options=options,
    )


def fall_back(prepared: Prepared, report: Report) -> bool:
    """Move `prepared` (in place) to the next graph with less of our preparation; False when none is left.

    Used after onnxruntime's quantizer crashed on the current graph: its plain `quantize_static` often
    handles the graph as uploaded. Details the search added (exclusions, tuning) are kept.
    """
    if prepared.source is None or prepared.work is None:
        return False
    order = FALLBACK_ORDER
    index = order.index(prepared.graph_path) + 1
    if index >= len(order):
        return False
    target = order[index]
    folder = prepared.work / f"fallback_{target.value}"
    if target == GraphPath.WITHOUT_PREPROCESSING:
        options = {**prepared.options, "optimize": False, "rewrite_gemm": False}
        rebuilt = prepare(prepared.source, folder, report, **options)
        path, per_channel_ok, extra = rebuilt.path, rebuilt.per_channel_ok, rebuilt.extra_outputs
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path = prepared.source
        if name_nodes(path, folder / "named.onnx"):
            path = folder / "named.onnx"
        extra = []
        if prepared.options.get("expose_outer_references"):
            extra = expose_body_inputs(path, folder / "exposed.onnx")
            path = folder / "exposed.onnx" if extra else path
        opset = default_opset(onnx.load(str(path), load_external_data=False))
        per_channel_ok = target == GraphPath.RAW and opset >= PER_CHANNEL_MIN_OPSET
    report(f"retrying the quantizer on the {GRAPH_LABELS[target]}")
    prepared.path, prepared.per_channel_ok, prepared.extra_outputs = path, per_channel_ok, extra
    prepared.graph_path = target
    return True


def quantize_with_fallbacks(prepared: Prepared, quantize_once: Callable[[], None], report: Report) -> None:
    """Run `quantize_once` on `prepared`; after an onnxruntime quantizer crash retry on less prepared graphs.

    Which graph succeeded goes to `prepared.details["quantizer_path"]` and every crash to
    `prepared.details["quantizer_failures"]`; the last crash is raised when no graph is left.
    """
    while True:
        try:
            quantize_once()
        except (CompressionError, JobInterrupted, MemoryError):
            raise
        except Exception as exc:  # onnxruntime's quantizers raise bare exceptions on graphs they cannot handle
            text = str(exc).strip()
            reason = f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
            failures = prepared.details.setdefault("quantizer_failures", [])
            failures.append({"graph": prepared.graph_path.value, "error": reason})
            report(f"onnxruntime's quantizer failed on the {GRAPH_LABELS[prepared.graph_path]}: {reason}")
            if not fall_back(prepared, report):
                raise
            continue
        prepared.details["quantizer_path"] = prepared.graph_path.value
        return


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
