"""Least-squares reconstruction of the layers that read pruned channels (He et al. 2017, ThiNet).

Removing input channels of a Conv/Gemm/MatMul leaves its output short of their contribution. With
calibration data, each such consumer gets new weights on its kept inputs, fitted so that its output on
the *pruned* model's inputs matches the *original* model's output of the same layer:

    min_W,b ||X_kept W + b - Y_orig||^2 + lambda ||W - W_current||^2

X_kept comes from the pruned model as it stands (layers upstream already reconstructed: errors there are
compensated here), Y_orig from the original model. Conv rows are im2col patches at a seeded sample of
output positions, so a few images give thousands of rows. The ridge pulls toward the current weights
(bias-compensated when that ran), and its strength is chosen on held-out rows (every fourth feed, or
every other row when there are fewer than four feeds); a layer keeps its current weights when no
strength lowers its held-out error, or when the solve fails or explodes.

Layers are processed in topological order, in stages: one run of the pruned model serves every layer of
a stage (and the layers reading the same tensor), so later stages see the earlier ones' new weights. The
number of stages adapts to `prune_reconstruct_seconds` (one layer per stage when affordable), and only the
calibration feeds one run of the original model gets through in a tenth of the budget are used (at least
two: a 640x640 detector keeps two images, and gets several stages instead of one). Each run
also gives the model's outputs: when a stage's new weights moved them further from the original's (mean
per-sample cosine on the calibration feeds), that stage goes back to its previous weights. Products are
small and many, so numpy's BLAS runs on one thread meanwhile (its thread pool thrashes on a loaded
machine: 40x slower measured with 2 threads under load 6 on 2 cores).

Only main-graph consumers are touched, and a weight also read anywhere else (another node, an If/Loop/Scan
body) is left alone; new biases are fresh initializers, so a shared bias is never edited in place.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from pydantic import BaseModel, Field

from compression.datasets import Dataset
from compression.errors import JobInterrupted
from compression.graph_names import read_counts
from compression.metrics.activation_size import activation_size
from compression.metrics.fidelity import cosine
from compression.metrics.inference import make_session
from compression.metrics.run_guard import RunTimeLimitError
from compression.pruning.layer_rows import input_rows, output_rows
from compression.pruning.layout import Analysis
from compression.pruning.rewrite import Removal, positions, set_input_initializer
from compression.pruning.ridge import add_rows, solve_ridge, squared_error

RECONSTRUCTED = frozenset({"Conv", "Gemm", "MatMul"})
RIDGE_GRID = (1e-1, 1e-2, 1e-3)  # lambda / mean diagonal of the Gram matrix, tried from strong to weak
MIN_GAIN = 0.01  # a fit must lower the held-out error by at least this fraction to replace the weights
MIN_ROWS_PER_COLUMN = 1.0  # fewer rows than input columns: the fit is left to the ridge alone, skip it
VALIDATION_EVERY = 4  # every fourth feed is held out (with at least this many feeds)
FEED_SHARE = 0.1  # the feeds kept are those one run of the original model gets through in this share of the budget
MIN_FEEDS = 2


class ReconstructionLimits(BaseModel):
    """Bounds on one reconstruction (the prune settings' `reconstruct_*` knobs)."""

    rows: int = Field(2048, ge=16)
    max_columns: int = Field(4608, ge=1)
    memory_mb: int = Field(512, ge=16)
    seconds: float = Field(15.0, gt=0)
    max_samples: int = Field(64, ge=1)
    seed: int = 0


@dataclass(eq=False)
class Site:
    """A main-graph layer that reads removed channels, found before the rewrite."""

    node: ir.Node
    kept_out: np.ndarray | None  # its kept output positions (original indexing); None: all kept


@dataclass(eq=False)
class Layer:
    """A site ready to fit: names to tap, the current weight as a [K, N] matrix, where the bias goes."""

    site: Site
    name: str
    op: str
    x_name: str
    y_name: str
    weight: ir.Value
    w0: np.ndarray  # [K, N] effective weight (Gemm's alpha folded in)
    b0: np.ndarray | None  # [N] effective bias seen in the tapped output; None: no intercept is fitted
    rows_by_feed: dict[int, np.ndarray] = field(default_factory=dict)
    targets: dict[int, np.ndarray] = field(default_factory=dict)  # feed -> [rows, N] original outputs
    stats: dict[str, Any] = field(default_factory=dict)  # Gram sums, fit and held-out


class LayerReport(BaseModel):
    name: str
    op: str
    columns: int
    rows: int = 0
    error_before: float | None = Field(None, description="held-out relative error with the current weights")
    error_after: float | None = Field(None, description="held-out relative error of the fit")
    ridge: float | None = None
    status: str = "pending"  # reconstructed | kept (why) | skipped (why)


class ReconstructionReport(BaseModel):
    layers_considered: int = 0
    layers_reconstructed: int = 0
    stages: int = 0
    feeds: int = 0
    seconds: float = 0.0
    output_cosine_before: dict[str, float] | None = None
    output_cosine_after: dict[str, float] | None = None
    kept: bool = False
    layers: list[LayerReport] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict)
    error: str | None = Field(None, description="why reconstruction stopped early (every layer kept its weights)")


def consumer_sites(analysis: Analysis, removal: Removal) -> list[Site]:
    """Conv/Gemm/MatMul layers whose weight loses input positions, with the output positions they keep."""
    removed_at: dict[tuple[int, int], set[int]] = {}
    nodes: dict[int, ir.Node] = {}
    readers: list[ir.Node] = []
    for root, removed in removal.items():
        if len(removed) == 0:
            continue
        for slot in analysis.groups[root].slots:
            if slot.input_index != 1:
                continue
            nodes[id(slot.node)] = slot.node
            key = (id(slot.node), slot.axis)
            removed_at.setdefault(key, set()).update(positions(removed, slot.offset, slot.block).tolist())
            if slot.role == "weight_in" and slot.node.op_type in RECONSTRUCTED and slot.node not in readers:
                readers.append(slot.node)
    sites = []
    for node in readers:
        weight = node.inputs[1].const_value if node.inputs[1] is not None else None
        if weight is None:
            continue
        axis = _out_axis(node, len(weight.shape))
        gone = removed_at.get((id(node), axis), set())
        kept = None if not gone else np.setdiff1d(np.arange(weight.shape[axis]), sorted(gone))
        sites.append(Site(node=node, kept_out=kept))
    return sites


def _out_axis(node: ir.Node, rank: int) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _int_attr(node, "transB", 0) else 1
    return rank - 1


def _int_attr(node: ir.Node, name: str, default: int) -> int:
    return node.attributes[name].as_int() if name in node.attributes else default


def _float_attr(node: ir.Node, name: str, default: float) -> float:
    return node.attributes[name].as_float() if name in node.attributes else default


def reconstruct(
    model: ir.Model,
    original: Path,
    sites: list[Site],
    dataset: Dataset,
    limits: ReconstructionLimits,
    check_canceled: Callable[[], None],
) -> ReconstructionReport:
    """Refit the consumers of pruned channels in `model` (already rewritten, in memory) against `original`."""
    started = time.perf_counter()
    report = ReconstructionReport()
    layers = _prepare(model, sites, report, limits.max_columns)
    report.layers_considered = len(layers) + len(report.skipped)
    if not layers:
        report.seconds = time.perf_counter() - started
        return report
    undo: list[Callable[[], None]] = []
    try:
        with _one_blas_thread():
            _reconstruct(model, original, layers, dataset, limits, check_canceled, report, undo, started)
    except (JobInterrupted, RunTimeLimitError):
        raise
    except Exception as exc:  # noqa: BLE001 (a failed refit must not fail the prune: the weights go back)
        for step in reversed(undo):
            step()
        report.layers_reconstructed = 0
        report.kept = False
        report.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    report.seconds = time.perf_counter() - started
    return report


def _one_blas_thread() -> AbstractContextManager[Any]:
    """numpy's BLAS limited to one thread when threadpoolctl is installed (else unchanged)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover (an optional dependency)
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _reconstruct(
    model: ir.Model,
    original: Path,
    layers: list[Layer],
    dataset: Dataset,
    limits: ReconstructionLimits,
    check_canceled: Callable[[], None],
    report: ReconstructionReport,
    undo: list[Callable[[], None]],
    started: float,
) -> None:
    dataset = dataset.take(limits.max_samples)
    with tempfile.TemporaryDirectory(prefix="reconstruct_") as tmp:
        work = Path(tmp)
        feeds = _feeds(original, dataset, limits, work)
        reference, run_seconds = _original_targets(original, layers, feeds, limits, work, check_canceled)
        batches = [_batch_of(feed, dataset) for feed in feeds]
        report.feeds = len(feeds)
        for layer in list(layers):
            if not layer.targets:
                report.skipped[layer.name] = "no output rows on the calibration data"
                layers.remove(layer)
        reports = {layer.name: LayerReport(name=layer.name, op=layer.op, columns=layer.w0.shape[0]) for layer in layers}
        memory = limits.memory_mb * 2**20
        baseline: list[float] | None = None
        best = -math.inf
        last: list[tuple[Layer, Callable[[], None]]] = []  # the previous stage's writes, judged by this run
        pending = list(layers)
        solve_seconds: list[float] = []
        while True:
            check_canceled()
            elapsed = time.perf_counter() - started
            per_layer = float(np.mean(solve_seconds)) if solve_seconds else 0.0
            left = limits.seconds - elapsed - run_seconds
            stage: list[Layer] = []
            if pending and left >= per_layer:  # stages sized from the last run (first: the original's) and solves
                stage = _next_stage(pending, left, run_seconds, per_layer, memory)
            if not stage and not last:
                break
            stage_started = time.perf_counter()
            outputs = _accumulate(model, stage, feeds, work, check_canceled)
            run_seconds = time.perf_counter() - stage_started
            cosines = _cosines(reference, outputs, batches)
            score = float(np.mean(cosines))
            if baseline is None:
                baseline = cosines
            if last and score < best:  # the previous stage moved the outputs away: undo it, run again
                for layer, step in reversed(last):
                    step()
                    reports[layer.name].status = "kept (the model's outputs moved further from the original)"
                last = []
                for layer in stage:
                    layer.stats.clear()
                continue
            undo.extend(step for _, step in last)
            last = []
            best, report.output_cosine_after = score, _summary(cosines)
            if not stage:
                break
            pending = [layer for layer in pending if layer not in stage]
            for layer in stage:
                if time.perf_counter() - started > limits.seconds:
                    reports[layer.name].status = "kept (prune_reconstruct_seconds spent)"
                    layer.stats.clear()
                    continue
                solved = time.perf_counter()
                step = _fit(model, layer, reports[layer.name])
                if step is not None:
                    last.append((layer, step))
                layer.stats.clear()
                layer.targets.clear()
                solve_seconds.append(time.perf_counter() - solved)
            report.stages += 1
        for layer in pending:
            reports[layer.name].status = "kept (prune_reconstruct_seconds spent)"
        report.layers = list(reports.values())
        report.layers_reconstructed = sum(r.status == "reconstructed" for r in report.layers)
        report.kept = report.layers_reconstructed > 0
        if baseline is not None:
            report.output_cosine_before = _summary(baseline)


def _next_stage(pending: list[Layer], left: float, run_seconds: float, per_layer: float, memory: int) -> list[Layer]:
    """The next layers to fit from one run: as few as the time left allows (one when affordable), within memory."""
    affordable = int((left - per_layer * len(pending)) // max(run_seconds, 1e-3))
    size = math.ceil(len(pending) / max(1, affordable))
    if per_layer > 0:
        size = min(size, max(1, int((left - run_seconds) / per_layer)))
    first = pending[:size]
    inputs = {layer.x_name for layer in first}
    chosen = [layer for layer in pending if layer in first or layer.x_name in inputs]  # one tap serves these too
    stage, used = [], 0
    for layer in chosen:
        columns = layer.w0.shape[0] + 1
        need = 16 * columns * (columns + layer.w0.shape[1])  # fit and held-out Gram sums, float64
        if stage and used + need > memory:
            break
        stage.append(layer)
        used += need
    return stage


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "worst": float(np.min(values))}


# --- preparing the layers -------------------------------------------------------------------------------------


def _prepare(model: ir.Model, sites: list[Site], report: ReconstructionReport, max_columns: int) -> list[Layer]:
    """Layers that can be refitted safely, in topological order; the others get a reason in the report."""
    proto_counts = read_counts(ir.to_proto(model).graph)
    order = {id(node): index for index, node in enumerate(model.graph)}
    layers = []
    for site in sorted(sites, key=lambda s: order.get(id(s.node), -1)):
        node = site.node
        name = node.name or node.outputs[0].name or node.op_type
        reason, layer = _layer(model, site, name, proto_counts)
        if layer is not None and layer.w0.shape[0] > max_columns:
            reason, layer = f"{layer.w0.shape[0]} input columns (prune_reconstruct_max_columns)", None
        if layer is None:
            report.skipped[name] = reason or "unsupported"
        else:
            layers.append(layer)
    return layers


def _layer(model: ir.Model, site: Site, name: str, counts: Any) -> tuple[str | None, Layer | None]:
    node = site.node
    if node.graph is not model.graph:
        return "inside a subgraph (its tensors cannot be tapped)", None
    data, weight = node.inputs[0], node.inputs[1]
    if data is None or not data.name or weight is None or not weight.name:
        return "unnamed input", None
    if weight.const_value is None or weight.is_graph_input() or weight.is_graph_output():
        return "weight is not a constant", None
    if counts[weight.name] != 1:
        return f"weight '{weight.name}' is read by {counts[weight.name]} nodes (bodies included)", None
    array = weight.const_value.numpy()
    if array.dtype.kind != "f":
        return f"weight of type {array.dtype}", None
    matrix, bias, reason = _effective(node, np.asarray(array, dtype=np.float64))
    if matrix is None:
        return reason, None
    if site.kept_out is not None and len(site.kept_out) != matrix.shape[1]:
        return "output positions do not match the rewritten weight", None
    y_name = node.outputs[0].name
    if not y_name:
        return "unnamed output", None
    return None, Layer(site, name, node.op_type, data.name, y_name, weight, matrix, bias)


def _effective(node: ir.Node, w: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """The weight as a [K, N] matrix of the tapped output, and the bias that output already holds."""
    op = node.op_type
    if op == "Conv":
        if _int_attr(node, "group", 1) != 1:
            return None, None, "grouped convolution"
        matrix = w.reshape(w.shape[0], -1).T
        bias = _const(node, 2)
        if bias is False:
            return None, None, "bias is computed"
        b0 = np.zeros(matrix.shape[1]) if bias is None else np.asarray(bias, np.float64).reshape(-1)
        return matrix, b0, None
    if op == "Gemm":
        if w.ndim != 2:
            return None, None, "weight is not a matrix"
        alpha, beta = _float_attr(node, "alpha", 1.0), _float_attr(node, "beta", 1.0)
        matrix = alpha * (w.T if _int_attr(node, "transB", 0) else w)
        bias = _const(node, 2)
        if bias is False:
            return None, None, "bias is computed"
        if bias is None:
            return matrix, np.zeros(matrix.shape[1]), None
        bias = np.asarray(bias, np.float64)
        if beta == 0:
            return matrix, None, None
        if bias.size not in (1, matrix.shape[1]) or (bias.ndim == 2 and bias.shape[0] != 1):
            return None, None, "bias varies along the rows"
        return matrix, beta * np.broadcast_to(bias.reshape(-1), (matrix.shape[1],)).copy(), None
    if w.ndim != 2:
        return None, None, "batched MatMul weight"
    return w, (np.zeros(w.shape[1]) if _following_add(node) is not None else None), None


def _const(node: ir.Node, index: int) -> np.ndarray | None | bool:
    """The constant at input `index`, None when absent, False when computed at run time."""
    value = node.inputs[index] if len(node.inputs) > index else None
    if value is None:
        return None
    if value.const_value is None or value.is_graph_input():
        return False
    return value.const_value.numpy()


def _following_add(node: ir.Node) -> tuple[ir.Node, int] | None:
    """The Add with a per-feature constant right after a MatMul: where its bias lives."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output() or uses[0][0].op_type != "Add":
        return None
    add, index = uses[0]
    other = add.inputs[1 - index]
    if other is None or other.const_value is None or other.is_graph_input():
        return None
    shape = other.const_value.numpy().shape
    columns = node.inputs[1].const_value.numpy().shape[-1]
    if not shape or shape[-1] not in (1, columns) or any(d != 1 for d in shape[:-1]):
        return None
    return add, 1 - index


# --- data ---------------------------------------------------------------------------------------------------


def _feeds(original: Path, dataset: Dataset, limits: ReconstructionLimits, work: Path) -> list[dict[str, np.ndarray]]:
    """The calibration feeds: batches sized to the memory setting and small enough to hold some feeds out."""
    batch = 1
    if dataset.layout == "batched" and dataset.n_samples > 1:
        size = activation_size(original, dataset.take(1).first_feed(1), 1, work / "probe")
        by_memory = int(max(1, limits.memory_mb * 2**20 // max(1, size.activations + 2 * size.largest)))
        batch = max(1, min(by_memory, math.ceil(dataset.n_samples / VALIDATION_EVERY)))
    return [feed for feed, _ in dataset.batches(batch)]


def _batch_of(feed: dict[str, np.ndarray], dataset: Dataset) -> int:
    """Samples in one feed: its batch axis in the batched layout, else one."""
    if dataset.layout != "batched":
        return 1
    sizes = {np.shape(v)[0] for name, v in feed.items() if name not in dataset.scalars and np.ndim(v)}
    return sizes.pop() if len(sizes) == 1 else 1


def _session(proto: onnx.ModelProto, taps: list[str], path: Path):  # noqa: ANN202
    produced = {out for node in proto.graph.node for out in node.output}
    existing = {out.name for out in proto.graph.output}
    for name in taps:
        if name in produced and name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    onnx.save(proto, str(path))
    session = make_session(path, 1, arena=False)
    path.unlink(missing_ok=True)
    return session


def _original_targets(
    original: Path,
    layers: list[Layer],
    feeds: list[dict[str, np.ndarray]],
    limits: ReconstructionLimits,
    work: Path,
    check_canceled: Callable[[], None],
) -> tuple[list[list[np.ndarray]], float]:
    """Sample each layer's rows and keep the original outputs there; returns the graph outputs per feed too.

    `feeds` is cut to what one run affords (`FEED_SHARE` of the budget, at least `MIN_FEEDS`)."""
    started = time.perf_counter()
    proto = onnx.load(str(original))
    graph_outputs = [out.name for out in proto.graph.output]
    taps = sorted({layer.y_name for layer in layers})
    session = _session(proto, taps, work / "original.onnx")
    available = {out.name for out in session.get_outputs()}
    # Targets are held for every layer until its stage: their float32 rows share the memory setting.
    columns = sum(layer.w0.shape[1] for layer in layers)
    rows = min(limits.rows, max(64, limits.memory_mb * 2**20 // (4 * max(columns, 1))))
    reference: list[list[np.ndarray]] = []
    names = [*graph_outputs, *[t for t in taps if t in available and t not in graph_outputs]]
    ran = time.perf_counter()
    first = dict(zip(names, session.run(names, feeds[0]), strict=True))
    # Every stage runs the kept feeds again: an expensive model keeps only what a share of the budget runs.
    affordable = int(FEED_SHARE * limits.seconds // max(time.perf_counter() - ran, 1e-6))
    del feeds[max(MIN_FEEDS, affordable) :]
    per_feed = max(1, math.ceil(rows / len(feeds)))
    for index, feed in enumerate(feeds):
        check_canceled()
        values = first if index == 0 else dict(zip(names, session.run(names, feed), strict=True))
        first = {}
        reference.append([_float_or_none(values[name]) for name in graph_outputs])
        for number, layer in enumerate(layers):
            y = values.get(layer.y_name)
            if y is None or np.asarray(y).dtype.kind != "f":
                continue
            flat = output_rows(layer.op, np.asarray(y))
            if flat is None:
                continue
            rng = np.random.default_rng([limits.seed, number, index])
            count = min(per_feed, flat.shape[0])
            rows = np.sort(rng.choice(flat.shape[0], size=count, replace=False))
            target = flat[rows]
            if layer.site.kept_out is not None:
                target = target[:, layer.site.kept_out]
            if target.shape[1] != layer.w0.shape[1]:
                continue
            layer.rows_by_feed[index] = rows
            layer.targets[index] = np.ascontiguousarray(target, dtype=np.float32)
        del values
    del session
    return reference, time.perf_counter() - started


def _float_or_none(array: Any) -> np.ndarray | None:
    array = np.asarray(array)
    return array if array.dtype.kind == "f" else None


def _accumulate(
    model: ir.Model,
    stage: list[Layer],
    feeds: list[dict[str, np.ndarray]],
    work: Path,
    check_canceled: Callable[[], None],
) -> list[list[np.ndarray | None]]:
    """One run of the pruned model: Gram sums of every stage layer (fit and held-out rows); its outputs."""
    proto = ir.to_proto(model)
    inputs = {value.name for value in proto.graph.input}
    taps = sorted({layer.x_name for layer in stage} - inputs)
    graph_outputs = [out.name for out in proto.graph.output]
    session = _session(proto, taps, work / "pruned.onnx")
    names = [*graph_outputs, *[t for t in taps if t not in graph_outputs]]
    held_out_feeds = len(feeds) >= VALIDATION_EVERY
    outputs = []
    for index, feed in enumerate(feeds):
        check_canceled()
        values = dict(zip(names, session.run(names, feed), strict=True))
        outputs.append([_float_or_none(values[name]) for name in graph_outputs])
        for layer in stage:
            if index not in layer.rows_by_feed:
                continue
            x = feed[layer.x_name] if layer.x_name in inputs else values.get(layer.x_name)
            if x is None:
                continue
            patches = input_rows(
                layer.site.node, layer.weight.const_value.numpy().shape, np.asarray(x), layer.rows_by_feed[index]
            )
            if patches is None or patches.shape[1] != layer.w0.shape[0]:
                layer.stats["broken"] = True
                continue
            target = layer.targets[index]
            if held_out_feeds:
                held_out = np.full(len(target), index % VALIDATION_EVERY == VALIDATION_EVERY - 1)
            elif len(target) > 1:
                held_out = np.arange(len(target)) % 2 == 1
            else:  # one row per feed (after global pooling): every other feed
                held_out = np.array([index % 2 == 1])
            for key, mask in (("fit", ~held_out), ("held", held_out)):
                if mask.any():
                    add_rows(layer.stats, key, patches[mask], target[mask], layer.b0 is not None)
        del values
    del session
    return outputs


def _fit(model: ir.Model, layer: Layer, entry: LayerReport) -> Callable[[], None] | None:
    """Solve the layer's ridge regressions, keep the best on held-out rows, write it; returns how to undo."""
    if layer.stats.get("broken"):
        entry.status = "skipped (its input rows could not be formed)"
        return None
    if "fit" not in layer.stats or "held" not in layer.stats:
        entry.status = "kept (too few rows to hold some out)"
        return None
    fit, held = layer.stats["fit"], layer.stats["held"]
    entry.rows = fit[3] + held[3]
    if entry.rows < MIN_ROWS_PER_COLUMN * layer.w0.shape[0]:
        entry.status = f"kept (fewer than {MIN_ROWS_PER_COLUMN} rows per input column)"
        return None
    start = layer.w0 if layer.b0 is None else np.concatenate([layer.w0, layer.b0[None, :]], axis=0)
    base = squared_error(start, held)
    scale = held[2] if held[2] > 0 else 1.0
    entry.error_before = math.sqrt(max(base, 0.0) / scale)
    columns = layer.w0.shape[0]
    penalty = np.ones(start.shape[0])
    if layer.b0 is not None:
        penalty[-1] = 0.0  # the intercept is free
    diagonal = float(np.mean(np.diag(fit[0])[:columns])) or 1.0
    best: tuple[float, float] | None = None
    for strength in RIDGE_GRID:
        solved = solve_ridge(fit[0], fit[1], start, strength * diagonal * penalty)
        if solved is None:
            continue
        error = squared_error(solved, held)
        if best is not None and error >= best[0]:
            break
        best = (error, strength)
    if best is None:
        entry.status = "kept (ill-conditioned)"
        return None
    entry.error_after = math.sqrt(max(best[0], 0.0) / scale)
    entry.ridge = best[1]
    if best[0] > base * (1 - MIN_GAIN):
        entry.status = "kept (the fit did not lower its held-out error)"
        return None
    both = tuple(a + b for a, b in zip(fit, held, strict=True))
    final = solve_ridge(both[0], both[1], start, best[1] * diagonal * penalty)
    if final is None:
        entry.status = "kept (ill-conditioned)"
        return None
    entry.status = "reconstructed"
    return _write(model, layer, final[:columns], final[columns] if layer.b0 is not None else None)


def _write(model: ir.Model, layer: Layer, matrix: np.ndarray, bias: np.ndarray | None) -> Callable[[], None]:
    node, weight = layer.site.node, layer.weight
    old = weight.const_value
    dtype = old.numpy().dtype
    shape = tuple(old.shape)
    if layer.op == "Conv":
        array = matrix.T.reshape(shape)
    elif layer.op == "Gemm":
        alpha = _float_attr(node, "alpha", 1.0)
        array = (matrix.T if _int_attr(node, "transB", 0) else matrix) / alpha
    else:
        array = matrix
    weight.const_value = ir.tensor(np.ascontiguousarray(array.astype(dtype)), name=weight.name)
    steps: list[Callable[[], None]] = []

    def restore_weight() -> None:
        weight.const_value = old

    steps.append(restore_weight)
    if bias is not None:
        graph = node.graph or model.graph
        if layer.op == "Conv":
            steps.append(_replace_input(graph, node, 2, bias, dtype, f"{layer.name}_bias_reconstructed"))
        elif layer.op == "Gemm":
            beta = _float_attr(node, "beta", 1.0)
            steps.append(_replace_input(graph, node, 2, bias / beta, dtype, f"{layer.name}_bias_reconstructed"))
        else:
            add, index = _following_add(node)  # type: ignore[misc]
            stored = add.inputs[index].const_value.numpy()
            current = np.asarray(stored, dtype=np.float64)
            updated = (np.broadcast_to(current.reshape(-1), bias.shape) + bias).reshape(
                (1,) * (current.ndim - 1) + bias.shape if current.ndim else bias.shape
            )
            steps.append(_replace_input(graph, add, index, updated, stored.dtype, f"{layer.name}_bias_reconstructed"))

    def undo() -> None:
        for step in reversed(steps):
            step()

    return undo


def _replace_input(
    graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, dtype: np.dtype, stem: str
) -> Callable[[], None]:
    """Point input `index` at a fresh initializer holding `array` (a shared one is never edited)."""
    previous = node.inputs[index] if len(node.inputs) > index else None
    updated = np.ascontiguousarray(np.asarray(array).astype(dtype if dtype.kind == "f" else np.float32))
    value = set_input_initializer(graph, node, index, updated, stem)

    def undo() -> None:
        node.replace_input_with(index, previous)
        if not list(value.uses()) and value.name in graph.initializers:
            graph.initializers.pop(value.name)

    return undo


def _cosines(
    reference: list[list[np.ndarray | None]], outputs: list[list[np.ndarray | None]], batches: list[int]
) -> list[float]:
    """Per-sample output cosines over all feeds (a batched feed's outputs split along their batch axis)."""
    values = []
    for ref, out, n in zip(reference, outputs, batches, strict=True):
        if n > 1 and all(r is None or (r.ndim > 1 and r.shape[0] == n) for r in ref):
            for i in range(n):
                values.append(_cosine([None if r is None or r.ndim < 2 else r[i] for r in ref],
                                      [None if o is None or o.ndim < 2 else o[i] for o in out]))  # fmt: skip
        else:
            values.append(_cosine(ref, out))
    return values


def _cosine(reference: list[np.ndarray | None], candidate: list[np.ndarray | None]) -> float:
    """Lowest cosine over the float outputs of one feed (outputs whose shape changed are not compared)."""
    worst = 1.0
    for ref, out in zip(reference, candidate, strict=True):
        if ref is None or out is None or ref.shape != out.shape:
            continue
        worst = min(worst, cosine(ref, out))
    return worst


def reconstruction_limits(settings: Any) -> ReconstructionLimits:
    """The limits from the engine settings (`EngineSettings`)."""
    prune = settings.prune
    return ReconstructionLimits(
        rows=prune.reconstruct_rows,
        max_columns=prune.reconstruct_max_columns,
        memory_mb=prune.reconstruct_memory_mb,
        seconds=prune.reconstruct_seconds,
        max_samples=prune.reconstruct_samples,
        seed=settings.seed,
    )
