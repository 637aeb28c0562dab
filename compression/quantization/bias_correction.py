"""Fast bias correction after static QDQ quantization, as NNCF's FastBiasCorrection does it.

Rounding a layer's weights shifts the mean of its output channels: with post-ReLU inputs (all positive)
the rounding errors of a channel's weights no longer cancel, and the next layer sees a constant offset per
channel. The offset is `(W - W_q) * E[x]`. NNCF measures the per-channel mean of the float input on
calibration data, pushes a constant blob of those means through the weight error, and adds the result
to the bias. Done per layer from *float* inputs, each correction is local: no layer compensates for an
upstream error that is itself being corrected, so every layer is corrected at once, exactly, after one
run of the float model (cached for the search's later attempts). The quantized model is never run here:
measuring it through exposed intermediate outputs would stop onnxruntime from fusing QLinearConv and
time different kernels than the ones deployed.

The weight error is only part of a layer's output error; activation rounding is the rest, and on
transformers (activation outliers, tiny weight-error shifts) the correction can do nothing or harm. So
the corrected model is kept only when its outputs are closer to the float model's on the same samples.

Biases stay float in our QDQ graphs (`float_bias`); a bias the quantizer put behind a DequantizeLinear
(MatMul + quantized Add) is re-quantized on its own scale. A Conv without a bias gets one. QOperator
graphs are left alone (their int32 biases are fused into QLinearConv).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from pydantic import BaseModel, Field

from compression.datasets import Dataset
from compression.graph_names import read_counts
from compression.metrics.inference import make_session, run_dataset
from compression.quantization.activations import activation_size, batch_for
from compression.quantization.sensitivity import expose

CHANNEL_AXIS = {"Conv": 1, "ConvTranspose": 1, "Gemm": -1, "MatMul": -1}
CONV_ATTRIBUTES = frozenset({"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides", "output_padding"})
BATCH = 32  # most samples per batch; fewer when their tensors would pass the memory setting
DEFAULT_MEMORY_BYTES = 512 * 2**20  # the quant_activation_memory_mb default
CHECK_SAMPLES = 64  # the keep-or-drop check runs both quantized models on this many of the samples
MIN_STATS_SAMPLES = 8  # fewer fit the activation volume cap: not run (per-sample activations too large)
EPS = 1e-12


class BiasCorrectionReport(BaseModel):
    nodes_corrected: int = 0
    skipped: dict[str, str] = Field(default_factory=dict, description="quantized node -> why it was not corrected")
    samples: int = 0
    mean_shift_over_std: float | None = Field(
        None, description="mean over corrected nodes of mean_c |bias shift| / std of the float output channel"
    )
    output_error_before: float | None = Field(
        None, description="relative squared error of the outputs vs float on the first 64 samples, uncorrected"
    )
    output_error_after: float | None = Field(None, description="the same with the corrected biases")
    kept: bool = Field(False, description="the corrected biases were kept (they lowered the output error)")
    not_run: str | None = Field(None, description="why the correction was not computed at all (activation volume)")


@dataclass
class Site:
    """A quantized layer: its float input and weight, its dequantized weight, where its bias lives."""

    node: str
    op_type: str
    attributes: list[onnx.AttributeProto]
    float_input: str
    float_output: str
    weight_error: np.ndarray  # W_float - W_dequantized
    bias: str | None  # initializer name in the quantized graph; None: the node has none yet (Conv)
    bias_scale: str | None = None  # set when the bias is stored quantized behind a DequantizeLinear
    bias_zero_point: str | None = None
    input_axis: int = 1
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ChannelStats:
    mean: np.ndarray
    std: np.ndarray
    shape: tuple[int, ...]  # one sample's shape (leading batch axis of 1)


def memory_batch(path: Path, dataset: Dataset, memory_bytes: int, work: Path) -> int:
    """Samples per batch whose tensors fit `memory_bytes`: every float tensor of the model once (an upper bound
    on the tapped ones a run returns) plus two copies of the largest (the one being reduced)."""
    return memory_plan(path, dataset, memory_bytes, work)[0]


def memory_plan(path: Path, dataset: Dataset, memory_bytes: int, work: Path) -> tuple[int, int]:
    """(`memory_batch`, the model's float activation bytes per sample)."""
    if dataset.n_samples == 0:
        return 1, 0
    size = activation_size(path, dataset.take(1).first_feed(1), 1, work / "probe")
    return batch_for(memory_bytes, size.activations + 2 * size.largest, cap=BATCH), int(size.activations)


def channel_stats(
    path: Path,
    names: dict[str, int],
    dataset: Dataset,
    threads: int,
    work: Path,
    batch: int = BATCH,
) -> dict[str, ChannelStats]:
    """Per-channel mean and std of tensors `names` (name -> channel axis) over the dataset, streamed per batch.

    One batch of the tapped tensors is held at a time (`batch` sized to the memory setting by the caller), and
    each tensor is reduced in place: float64 sums over the other axes, no float64 copy of the tensor.
    """
    work.mkdir(parents=True, exist_ok=True)
    tapped = work / f"tapped_{path.stem}.onnx"
    wanted = sorted(expose(path, tapped, set(names)))
    graph_inputs = sorted(
        set(names) & {value.name for value in onnx.load(str(path), load_external_data=False).graph.input}
    )
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    session = make_session(tapped, threads, arena=False)
    for feed, _ in dataset.batches(batch):
        values = [*session.run(wanted, feed), *(feed[name] for name in graph_inputs)]
        for name, value in zip([*wanted, *graph_inputs], values, strict=True):
            value = np.asarray(value)
            if value.ndim < 2 or value.dtype.kind != "f":
                continue
            axis = names[name] % value.ndim
            others = tuple(a for a in range(value.ndim) if a != axis)
            total = value.sum(axis=others, dtype=np.float64)
            if name in sums and sums[name].shape != total.shape:
                continue  # the channel count changes between batches: not a per-channel tensor
            sums[name] = sums.get(name, 0.0) + total
            squares[name] = squares.get(name, 0.0) + np.square(value).sum(axis=others, dtype=np.float64)
            counts[name] = counts.get(name, 0) + value.size // value.shape[axis]
            shapes.setdefault(name, (1, *value.shape[1:]))
        del values
    del session
    tapped.unlink(missing_ok=True)
    stats = {}
    for name, total in sums.items():
        mean = total / counts[name]
        variance = np.maximum(squares[name] / counts[name] - mean * mean, 0.0)
        stats[name] = ChannelStats(mean=mean, std=np.sqrt(variance), shape=shapes[name])
    return stats


def dequantize(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> np.ndarray:
    """The float values a DequantizeLinear of an initializer produces (per-tensor or per-axis)."""
    values = numpy_helper.to_array(initializers[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
    zero = np.zeros_like(scale)
    if len(node.input) > 2 and node.input[2]:
        zero = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float64)
    if scale.size > 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % values.ndim
        shape = [1] * values.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (values - zero) * scale


def find_sites(quant: onnx.ModelProto, float_model: onnx.ModelProto) -> tuple[list[Site], dict[str, str]]:
    """Quantized Conv/ConvTranspose/Gemm/MatMul nodes with a correctable bias, and why others were skipped."""
    graph = quant.graph
    initializers = {init.name: init for init in graph.initializer}
    float_inits = {init.name: init for init in float_model.graph.initializer}
    float_nodes = {node.name: node for node in float_model.graph.node if node.name}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reads = read_counts(graph)
    sites: list[Site] = []
    skipped: dict[str, str] = {}

    def dequantized_initializer(name: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            return node
        return None

    for node in graph.node:
        if node.op_type not in CHANNEL_AXIS or len(node.input) < 2 or node.name not in float_nodes:
            continue
        weight_dq = dequantized_initializer(node.input[1])
        if weight_dq is None:
            continue  # weights not quantized (kept float): nothing to correct
        reason = _unsupported(node, float_nodes[node.name], float_inits)
        if reason:
            skipped[node.name] = reason
            continue
        float_node = float_nodes[node.name]
        weight = numpy_helper.to_array(float_inits[float_node.input[1]]).astype(np.float64)
        error = weight - dequantize(weight_dq, initializers)
        if error.shape != weight.shape:
            skipped[node.name] = "dequantized weight shape differs from the float weight"
            continue
        site = Site(
            node=node.name,
            op_type=node.op_type,
            attributes=list(node.attribute),
            float_input=float_node.input[0],
            float_output=float_node.output[0],
            weight_error=error,
            bias=None,
            input_axis=1 if node.op_type.startswith("Conv") else -1,
        )
        bias_input = _matmul_bias(node, consumers) if node.op_type == "MatMul" else None
        if node.op_type != "MatMul" and len(node.input) > 2 and node.input[2]:
            bias_input = node.input[2]
        if bias_input is None and node.op_type in ("MatMul", "Gemm"):
            skipped[node.name] = f"{node.op_type} without a constant bias"
            continue
        if bias_input is not None:
            dq = dequantized_initializer(bias_input)
            if bias_input in initializers:
                site.bias = bias_input
            elif dq is not None and numpy_helper.to_array(initializers[dq.input[1]]).size == 1:
                site.bias, site.bias_scale = dq.input[0], dq.input[1]
                site.bias_zero_point = dq.input[2] if len(dq.input) > 2 and dq.input[2] else None
            else:
                skipped[node.name] = "bias is computed or quantized per channel"
                continue
            # readers inside If/Loop/Scan bodies count too: the bias is changed in place
            if reads[site.bias] != 1 or (dq is not None and reads[dq.output[0]] != 1):
                skipped[node.name] = "bias shared with other nodes (or read inside an If/Loop/Scan body)"
                continue
        sites.append(site)
    return sites, skipped


def _unsupported(node: onnx.NodeProto, float_node: onnx.NodeProto, float_inits: dict[str, onnx.TensorProto]) -> str:
    if len(float_node.input) < 2 or float_node.input[1] not in float_inits:
        return "float weight is not an initializer"
    if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
        return "Gemm with transA"
    if node.op_type == "MatMul" and numpy_helper.to_array(float_inits[float_node.input[1]]).ndim != 2:
        return "MatMul with a batched weight"
    return ""


def _matmul_bias(node: onnx.NodeProto, consumers: dict[str, list[onnx.NodeProto]]) -> str | None:
    """The other input of the Add right after a MatMul (through a QuantizeLinear/DequantizeLinear pair)."""
    name = node.output[0]
    after = consumers.get(name, [])
    if len(after) == 1 and after[0].op_type == "QuantizeLinear":
        dq = consumers.get(after[0].output[0], [])
        if len(dq) == 1 and dq[0].op_type == "DequantizeLinear":
            name, after = dq[0].output[0], consumers.get(dq[0].output[0], [])
    if len(after) != 1 or after[0].op_type != "Add":
        return None
    others = [i for i in after[0].input if i != name]
    return others[0] if len(others) == 1 else None


def bias_shifts(sites: list[Site], inputs: dict[str, ChannelStats], work: Path) -> dict[str, np.ndarray]:
    """`(W - W_q) * E[x]` per output channel for every site whose input statistics are known.

    MatMul/Gemm are linear in a vector of channel means. A Conv sees a constant image of its input's channel
    means run through the weight error with the node's own padding, strides and groups (one small model for
    every Conv), so border positions count as they do in the real layer.
    """
    shifts: dict[str, np.ndarray] = {}
    convs: list[tuple[Site, ChannelStats]] = []
    for site in sites:
        stats = inputs.get(site.float_input)
        if stats is None:
            continue
        if site.op_type.startswith("Conv"):
            convs.append((site, stats))
            continue
        mean, error = stats.mean, site.weight_error
        attrs = {a.name: helper.get_attribute_value(a) for a in site.attributes}
        if site.op_type == "Gemm":
            shift = (error @ mean if attrs.get("transB", 0) else mean @ error) * attrs.get("alpha", 1.0)
        else:
            shift = mean @ error
        shifts[site.node] = np.asarray(shift, dtype=np.float64)
    if convs:
        shifts.update(_conv_shifts(convs, work))
    return shifts


def _conv_shifts(convs: list[tuple[Site, ChannelStats]], work: Path) -> dict[str, np.ndarray]:
    nodes, inits, outputs = [], [], []
    for index, (site, stats) in enumerate(convs):
        blob = np.broadcast_to(stats.mean.reshape(1, -1, *([1] * (len(stats.shape) - 2))), stats.shape)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(blob, dtype=np.float32), f"x{index}"))
        inits.append(numpy_helper.from_array(site.weight_error.astype(np.float32), f"w{index}"))
        attributes = [a for a in site.attributes if a.name in CONV_ATTRIBUTES]
        node = helper.make_node(site.op_type, [f"x{index}", f"w{index}"], [f"y{index}"], name=f"c{index}")
        node.attribute.extend(attributes)
        nodes.append(node)
        outputs.append(helper.make_tensor_value_info(f"y{index}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "weight_error", [], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = work / "weight_error.onnx"
    work.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    results = make_session(path).run(None, {})
    path.unlink(missing_ok=True)
    return {
        site.node: value.reshape(value.shape[0], value.shape[1], -1).mean(axis=(0, 2)).astype(np.float64)
        for (site, _), value in zip(convs, results, strict=True)
    }


class BiasCorrector:
    """Corrects the biases of quantized models of one float graph; the float statistics are computed once.

    Every run here (float statistics, the keep-or-drop check) uses batches whose tensors fit `memory_bytes`.
    """

    def __init__(
        self,
        dataset: Dataset,
        samples: int,
        threads: int,
        work: Path,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        max_bytes: int | None = None,
    ) -> None:
        self.dataset = dataset.take(samples)
        self.threads = threads
        self.work = work
        self.memory_bytes = memory_bytes  # quant_activation_memory_mb: sets the batch of every run here
        self.max_bytes = max_bytes  # quant_bias_correction_activation_mb: caps the samples of the statistics
        self._batch: dict[Path, int] = {}
        self._per_sample: dict[Path, int] = {}
        self._stats: dict[Path, dict[str, ChannelStats]] = {}
        self._outputs: dict[Path, dict[str, np.ndarray]] = {}

    def batch(self, float_path: Path) -> int:
        if float_path not in self._batch:
            plan = memory_plan(float_path, self.dataset, self.memory_bytes, self.work)
            self._batch[float_path], self._per_sample[float_path] = plan
        return self._batch[float_path]

    def stats_samples(self, float_path: Path) -> int:
        """Samples whose float activations (all tensors, per sample) fit `max_bytes`; all without a cap."""
        self.batch(float_path)
        per_sample = self._per_sample[float_path]
        if self.max_bytes is None or per_sample <= 0:
            return self.dataset.n_samples
        return min(self.dataset.n_samples, self.max_bytes // per_sample)

    def _float_stats(self, float_path: Path, sites: list[Site]) -> dict[str, ChannelStats]:
        cached = self._stats.setdefault(float_path, {})
        wanted = {s.float_input: s.input_axis for s in sites} | {s.float_output: CHANNEL_AXIS[s.op_type] for s in sites}
        missing = {name: axis for name, axis in wanted.items() if name not in cached}
        if missing:
            batch = self.batch(float_path)
            data = self.dataset.take(self.stats_samples(float_path))
            cached.update(channel_stats(float_path, missing, data, self.threads, self.work, batch))
        return cached

    def apply(self, float_path: Path, quant_path: Path) -> BiasCorrectionReport:
        """Correct the biases of the QDQ model at `quant_path` in place; returns what was done."""
        model = onnx.load(str(quant_path))
        sites, skipped = find_sites(model, onnx.load(str(float_path), load_external_data=False))
        report = BiasCorrectionReport(skipped=skipped, samples=self.dataset.n_samples)
        if not sites:
            return report
        report.samples = self.stats_samples(float_path)
        if report.samples < min(MIN_STATS_SAMPLES, self.dataset.n_samples):
            report.samples = 0
            mb = self._per_sample[float_path] / 2**20
            report.not_run = (
                f"{mb:.0f} MB of activations per sample: fewer than {MIN_STATS_SAMPLES} samples fit "
                f"quant_bias_correction_activation_mb ({(self.max_bytes or 0) / 2**20:.0f})"
            )
            return report
        stats = self._float_stats(float_path, sites)
        shifts = bias_shifts(sites, stats, self.work)
        initializers = {init.name: init for init in model.graph.initializer}
        nodes = {node.name: node for node in model.graph.node}
        relative: list[float] = []
        for site in sites:
            shift = shifts.get(site.node)
            if shift is None:
                report.skipped[site.node] = "input statistics unavailable"
                continue
            reason = _write_bias(site, shift, model, initializers, nodes[site.node])
            if reason:
                report.skipped[site.node] = reason
                continue
            report.nodes_corrected += 1
            out = stats.get(site.float_output)
            if out is not None and out.std.shape == shift.shape:
                relative.append(float(np.mean(np.abs(shift) / (out.std + EPS))))
        report.mean_shift_over_std = float(np.mean(relative)) if relative else None
        if not report.nodes_corrected:
            return report
        corrected = self.work / f"corrected_{quant_path.name}"
        onnx.save(model, str(corrected))
        # the weight error is only part of a layer's error (activation rounding is the rest): keep the
        # correction only when the whole model's outputs get closer to the float model's
        report.output_error_before = self._output_error(float_path, quant_path)
        report.output_error_after = self._output_error(float_path, corrected)
        report.kept = report.output_error_after < report.output_error_before
        if report.kept:
            corrected.replace(quant_path)
        else:
            corrected.unlink(missing_ok=True)
        return report

    def _output_error(self, float_path: Path, path: Path) -> float:
        batch, check = self.batch(float_path), self.dataset.take(CHECK_SAMPLES)
        if float_path not in self._outputs:
            self._outputs[float_path] = run_dataset(make_session(float_path, self.threads, arena=False), check, batch)
        reference = self._outputs[float_path]
        outputs = run_dataset(make_session(path, self.threads, arena=False), check, batch)
        errors = []
        for name, ref in reference.items():
            got = outputs.get(name)
            if got is None or got.shape != ref.shape or ref.dtype.kind != "f":
                continue
            ref64 = ref.astype(np.float64)
            errors.append(float(np.sum((got - ref64) ** 2) / max(float(np.sum(ref64 * ref64)), EPS)))
        return float(np.mean(errors)) if errors else float("inf")


def _write_bias(
    site: Site,
    shift: np.ndarray,
    model: onnx.ModelProto,
    initializers: dict[str, onnx.TensorProto],
    node: onnx.NodeProto,
) -> str:
    """Add `shift` to the site's bias (creating a Conv bias); returns why not, or ''."""
    if not np.all(np.isfinite(shift)):
        return "non-finite shift"
    if site.bias is None:
        name = f"{site.node}.corrected_bias"
        model.graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), name))
        if len(node.input) > 2:
            node.input[2] = name
        else:
            node.input.append(name)
        return ""
    current = numpy_helper.to_array(initializers[site.bias])
    if current.size != shift.size:
        return f"bias of {current.size} values for {shift.size} channels"
    shift = shift.reshape(current.shape)
    if site.bias_scale is None:
        stored = (current.astype(np.float64) + shift).astype(current.dtype)
    else:
        # per-tensor (0-d) or per-channel int32 bias scales and zero points: broadcast against the bias
        scale = _per_channel(numpy_helper.to_array(initializers[site.bias_scale]), current.shape)
        zero = (
            _per_channel(numpy_helper.to_array(initializers[site.bias_zero_point]), current.shape)
            if site.bias_zero_point
            else 0
        )
        info = np.iinfo(current.dtype)
        value = (current.astype(np.float64) - zero) * scale + shift
        stored = np.clip(np.round(value / scale) + zero, info.min, info.max).astype(current.dtype)
    initializers[site.bias].CopyFrom(numpy_helper.from_array(stored, site.bias))
    return ""


def _per_channel(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A scale or zero point as float64, shaped to broadcast against a bias of `shape`."""
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(shape) if values.size == int(np.prod(shape)) and values.size > 1 else values.reshape(())
