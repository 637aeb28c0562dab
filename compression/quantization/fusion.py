"""onnxruntime's transformer fusions before dynamic quantization, kept only when the quantized result is faster.

Exported transformers spell attention as MatMul/Reshape/Transpose/Softmax and GELU as Erf arithmetic. The
`onnxruntime.transformers` optimizer rewrites them into com.microsoft ops (Attention, LayerNormalization,
SkipLayerNormalization, BiasGelu/FastGelu) that `quantize_dynamic` turns into QAttention and
DynamicQuantizeMatMul: one int8 kernel for the whole Q/K/V projection and attention instead of a dozen float
ops and transposes. Whether that pays depends on the CPU and the shapes (SkipLayerNormalization was slower
than LayerNormalization + Add at hidden size 64 here), so each variant is quantized and timed and the
fastest one within the budget is kept; the unfused graph is always a variant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from compression.errors import JobInterrupted
from compression.graph_names import defined_names, outer_references
from compression.metrics.evaluation import Evaluator
from compression.model_info import iter_nodes
from compression.quantization.budget import Budget, judge
from compression.quantization.prepare import Prepared, name_nodes
from compression.quantization.speed import interleaved_latency

if TYPE_CHECKING:
    from compression.quantization.modes import ModeQuantizer

FUSED_OPS = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "SkipLayerNormalization",
        "EmbedLayerNormalization",
        "BiasGelu",
        "FastGelu",
        "Gelu",
        "GemmFastGelu",
    }
)
# a graph worth fusing multiplies activations by activations (attention) or normalizes its rows
TRANSFORMER_HINTS = frozenset({"Softmax", "LayerNormalization", "Erf"})
# user exclusions of these op types mean "leave the projections float": fusing would quantize them as QAttention
BLOCKING_EXCLUDED_TYPES = frozenset({"MatMul", "Attention"})
_LOGGERS = ("onnxruntime.transformers", "fusion_base", "onnx_model", "optimizer")


@dataclass(frozen=True)
class FusionVariant:
    """One way to fuse: `skip_layer_norm` merges residual Add + LayerNormalization; `gelu_approximation`
    replaces exact (Erf) GELU by its tanh form (FastGelu), which differs by under 1e-3 and is judged by the
    budget like any quantization error."""

    name: str
    skip_layer_norm: bool
    gelu_approximation: bool


@dataclass
class FusedGraph:
    variant: FusionVariant
    path: Path
    fused_ops: dict[str, int] = field(default_factory=dict)


def fusion_variants(gelu_approximation: bool) -> list[FusionVariant]:
    return [
        FusionVariant("fused", skip_layer_norm=False, gelu_approximation=gelu_approximation),
        FusionVariant("fused_skip_layer_norm", skip_layer_norm=True, gelu_approximation=gelu_approximation),
    ]


def worth_fusing(path: Path, nodes_to_exclude: list[str], op_types_to_exclude: list[str]) -> str | None:
    """None when the graph may be fused, else why not (recorded in the metrics)."""
    if BLOCKING_EXCLUDED_TYPES & set(op_types_to_exclude):
        return "op_types_to_exclude keeps MatMul/Attention float"
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    if "MatMul" not in ops or not (TRANSFORMER_HINTS & ops):
        return "no transformer pattern (MatMul with Softmax, LayerNormalization or Erf)"
    return None


def residual_branch_first(model: onnx.ModelProto) -> int:
    """Put the projection branch first in residual Adds whose two inputs are both Add outputs.

    The optimizer's attention matcher follows the *first* Add parent of the Add before a LayerNormalization,
    so `x + proj(attn)` with `x` itself an Add (embeddings + positions) hides the attention from it;
    `proj(attn) + x` is what BERT exports and matches. Add is commutative, broadcasting included. Only the
    top graph is touched and no name changes, so If/Loop/Scan bodies are unaffected.
    """
    producer = {out: node for node in model.graph.node for out in node.output}

    def feeds_from_matmul(name: str) -> bool:
        node = producer.get(name)
        return node is not None and any(
            producer.get(i) is not None and producer[i].op_type in ("MatMul", "Gemm") for i in node.input
        )

    swapped = 0
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        first, second = (producer.get(name) for name in node.input)
        if first is None or second is None or first.op_type != "Add" or second.op_type != "Add":
            continue
        if feeds_from_matmul(node.input[1]) and not feeds_from_matmul(node.input[0]):
            node.input[0], node.input[1] = node.input[1], node.input[0]
            swapped += 1
    return swapped


@contextmanager
def _quiet() -> Iterator[None]:
    """The optimizer logs a warning for every non-PyTorch producer and debug traces for every failed match."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def fuse(src: Path, dst: Path, variant: FusionVariant) -> dict[str, int]:
    """Fuse `src` into `dst` with onnxruntime's BERT-family fusions; returns the fused op counts (may be empty).

    opt_level 0: only the Python fusions run, no onnxruntime session rewrites the graph (those would turn a
    MatMul+Add back into Gemm, which dynamic quantization leaves float). Heads and hidden size are read from
    the graph's Reshape shapes (0 = infer).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(str(src))
    residual_branch_first(model)
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = variant.skip_layer_norm
    options.enable_bias_skip_layer_norm = variant.skip_layer_norm
    options.enable_gelu_approximation = variant.gelu_approximation
    options.enable_embed_layer_norm = False  # needs position-id inputs; rewrites graph inputs
    with _quiet():
        optimized = optimize_model(
            model, model_type="bert", num_heads=0, hidden_size=0, optimization_options=options, opt_level=0
        )
    fused = optimized.model
    missing = outer_references(model.graph) - defined_names(fused.graph)
    if missing:  # a body reads a value the fusion removed: not a graph we may hand on
        raise ValueError(f"fusion removed values read inside If/Loop/Scan bodies: {sorted(missing)[:5]}")
    counts: dict[str, int] = {}
    for node in iter_nodes(fused.graph):
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    optimized.save_model_to_file(str(dst), use_external_data_format=False)  # adds the com.microsoft opset
    return counts


def fused_graphs(
    src: Path, work: Path, variants: list[FusionVariant], report: Callable[[str], None]
) -> list[FusedGraph]:
    """Every variant that fused something; an optimizer failure skips that variant with an event."""
    work.mkdir(parents=True, exist_ok=True)
    found: list[FusedGraph] = []
    for variant in variants:
        dst = work / f"{variant.name}.onnx"
        try:
            counts = fuse(src, dst, variant)
        except Exception as exc:  # the optimizer raises bare exceptions on graphs it cannot follow
            report(f"transformer fusion '{variant.name}' failed: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        if counts:
            found.append(FusedGraph(variant, dst, counts))
    return found


@dataclass
class Timed:
    name: str
    path: Path
    prepared: Path
    fused_ops: dict[str, int]
    latency_ms: float | None = None
    within_budget: bool | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        return {
            "fused_ops": self.fused_ops,
            "latency_ms": self.latency_ms,
            "within_budget": self.within_budget,
            **({"error": self.error} if self.error else {}),
        }


def pick(timed: list[Timed]) -> Timed:
    """The fastest variant within budget; when none is, the fastest; the unfused one (first) on ties."""
    runnable = [t for t in timed if t.latency_ms is not None]
    within = [t for t in runnable if t.within_budget]
    pool = within or runnable
    return min(pool, key=lambda t: (t.latency_ms, timed.index(t)))


def tune_fusion(quantizer: ModeQuantizer, prepared: Prepared, evaluator: Evaluator) -> None:
    """Swap `prepared.path` for a fused graph when its quantized form is faster (and within budget).

    Each candidate graph (unfused first) is quantized with the user's exclusions, run on the eval data,
    judged against the budget and timed interleaved with the others; the choice is in the metrics as
    `transformer_fusion`.
    """
    config, settings = quantizer.config, quantizer.ctx.settings
    if not settings.quantize.transformer_fusion:
        return
    why_not = worth_fusing(prepared.path, config.nodes_to_exclude, config.op_types_to_exclude)
    if why_not is not None:
        quantizer.details["transformer_fusion"] = {"applied": False, "reason": why_not}
        return
    variants = fusion_variants(settings.quantize.fusion_gelu_approximation)
    graphs = fused_graphs(prepared.path, quantizer.work / "fusion", variants, quantizer.report)
    user = set(config.nodes_to_exclude)
    graphs = [g for g in graphs if user <= {node.name for node in iter_nodes(_graph(g.path))}]
    if not graphs:
        quantizer.details["transformer_fusion"] = {"applied": False, "reason": "nothing fused"}
        return
    for graph in graphs:
        name_nodes(graph.path, graph.path)
    timed = [Timed("unfused", quantizer.work / "fusion" / "q_unfused.onnx", prepared.path, {})]
    timed += [Timed(g.variant.name, g.path.with_name(f"q_{g.path.name}"), g.path, g.fused_ops) for g in graphs]
    budget = Budget.from_settings(config.max_accuracy_drop, settings, config.budget_metric)
    for candidate in timed:
        quantizer.ctx.check_canceled()
        variant = Prepared(path=candidate.prepared, per_channel_ok=prepared.per_channel_ok, details=prepared.details)
        try:
            quantizer.quantize(variant, candidate.path, list(config.nodes_to_exclude))
            candidate.within_budget = judge(evaluator.fidelity(candidate.path), budget).ok
            candidate.latency_ms = 0.0
        except JobInterrupted:
            raise
        except Exception as exc:  # a variant onnxruntime cannot quantize or run is skipped, not fatal
            candidate.error = f"{type(exc).__name__}: {str(exc)[:200]}"
    runnable = [t for t in timed if t.latency_ms is not None]
    within = [t for t in runnable if t.within_budget]
    to_time = within or runnable  # pick() chooses among the variants within budget when there are any
    not_timed = "" if within else _cannot_be_chosen(quantizer, runnable)
    measured = len(to_time) > 1 and not not_timed
    if measured:
        stats = interleaved_latency([t.path for t in to_time], evaluator, settings)
        for candidate, stat in zip(to_time, stats, strict=True):
            candidate.latency_ms = stat.median_ms
    chosen = (runnable[0] if not_timed else pick(to_time)) if runnable else timed[0]
    for candidate in runnable:  # ran, but not timed: no latency figure
        if not measured or candidate not in to_time:
            candidate.latency_ms = None
    quantizer.details["transformer_fusion"] = {
        "applied": chosen.name != "unfused",
        "chosen": chosen.name,
        "variants": {t.name: t.row() for t in timed},
        **({"not_timed": not_timed} if not_timed else {}),
    }
    if chosen.name != "unfused":
        prepared.path = chosen.prepared
        quantizer.report(f"transformer fusion '{chosen.name}' kept ({chosen.fused_ops}): its quantized model is faster")


def _cannot_be_chosen(quantizer: ModeQuantizer, variants: list[Timed]) -> str:
    """Why timing the variants can change nothing, or "": none met the budget and auto says a first attempt of any
    of their sizes could not be chosen (a weight-storage candidate met the budget clearly smaller), so this
    candidate's search is not continued whichever variant its first attempt uses; the unfused one is kept."""
    hook = quantizer.cannot_be_chosen
    if hook is None or not variants:
        return ""
    reasons = [hook(variant.path.stat().st_size) for variant in variants]
    if not all(reasons):
        return ""
    return f"no variant met the budget and none could be chosen: {reasons[0]} of the first variant"


def _graph(path: Path) -> onnx.GraphProto:
    return onnx.load(str(path), load_external_data=False).graph
