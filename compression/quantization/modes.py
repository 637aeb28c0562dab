"""One quantizer per mode: prepare the graph once, then quantize it with a given exclusion list.

The budget search re-quantizes with growing exclusions, so preparation (shape inference, opset
upgrade, Constant lifting) is split from the quantizer call.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from compression.contract import PassContext
from compression.datasets import Dataset
from compression.graph_names import iter_graphs
from compression.metrics.evaluation import Evaluator
from compression.quantization.activation_ranges import refine_ranges
from compression.quantization.bias_correction import BiasCorrector
from compression.quantization.calibration import DatasetReader, calibrate_into_cache, calibration_dataset, ort_method
from compression.quantization.compact import compact, original_names
from compression.quantization.config import (
    CalibrationMethodName,
    DynamicQuantizeConfig,
    Fp16QuantizeConfig,
    Fp16WeightsQuantizeConfig,
    Int8WeightsQuantizeConfig,
    ModeConfig,
    StaticQuantizeConfig,
    WeightOnlyQuantizeConfig,
)
from compression.quantization.conv_channel_pad import conv_weight_dims
from compression.quantization.conv_weights import conv_weights_to_int8
from compression.quantization.fusion import tune_fusion
from compression.quantization.opset import ensure_opset
from compression.quantization.ort_workarounds import static_extra_options
from compression.quantization.prepare import Prepared, prepare, quantize_with_fallbacks
from compression.quantization.saturation import reduce_range
from compression.quantization.smooth_quant import smooth_prepared
from compression.quantization.static_variants import (
    layout_kept,
    layout_rejected,
    pad_conv_file,
    tune_conv_layout,
    use_int8,
)
from compression.quantization.timing import phase
from compression.quantization.weight_storage import store_weights, weight_nodes

GATHER_INT4_MIN_OPSET = 21
QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


class ModeQuantizer(ABC):
    """Quantizes a prepared model; `quantizable_ops` is what the sensitivity ranking may keep in float."""

    quantizable_ops: frozenset[str] = frozenset()
    quantizes_bodies: bool = False  # the quantizer also rewrites nodes inside If/Loop/Scan bodies
    # auto: why a first attempt of this many bytes that missed the budget could not be chosen ("": it could)
    cannot_be_chosen: Callable[[int], str] | None = None

    def __init__(self, config: ModeConfig, ctx: PassContext, work: Path) -> None:
        self.config = config
        self.ctx = ctx
        self.work = work
        self.details: dict[str, Any] = {}

    def report(self, message: str) -> None:
        self.ctx.event(message)

    @abstractmethod
    def prepare(self, src: Path) -> Prepared: ...

    @abstractmethod
    def quantize(self, prepared: Prepared, dst: Path, exclude: list[str]) -> None: ...

    def tune(self, prepared: Prepared, evaluator: Evaluator) -> None:
        """Mode-specific choices that need a measurement on the prepared graph (default: none)."""
        return None

    def tune_returned(self, prepared: Prepared, evaluator: Evaluator, path: Path, exclude: list[str]) -> bool:
        """Choices measured on the within-budget attempt the search returns (`path`, keeping `exclude` float).

        True: a choice changed, and the search re-quantizes with `exclude` and judges that attempt; then
        `returned_kept` or `returned_rejected` (it broke the budget: the first attempt stays). Default: none.
        """
        return False

    def returned_kept(self, prepared: Prepared) -> None:
        return None

    def returned_rejected(self, prepared: Prepared, reasons: list[str]) -> None:
        return None

    def candidate_nodes(self, prepared: Prepared) -> list[str]:
        """Names of the prepared graph's nodes this mode turns into quantized ops.

        Modes whose quantizer also quantizes If/Loop/Scan bodies (`quantizes_bodies`) list the body nodes too,
        so the search can keep them float (onnxruntime's body quantizer honours the same exclusion list).
        """
        model = onnx.load(str(prepared.path), load_external_data=False)
        graphs = list(iter_graphs(model.graph)) if self.quantizes_bodies else [model.graph]
        initializers = {init.name for graph in graphs for init in graph.initializer}
        excluded_types = set(self.config.op_types_to_exclude)
        return [
            node.name
            for graph in graphs
            for node in graph.node
            if node.name
            and node.op_type in self.quantizable_ops
            and node.op_type not in excluded_types
            and self._has_weight(node, initializers)
        ]

    def _has_weight(self, node: onnx.NodeProto, initializers: set[str]) -> bool:
        return True


def _ops(*names: str) -> frozenset[str]:
    return frozenset(names)


class DynamicQuantizer(ModeQuantizer):
    quantizable_ops = _ops("MatMul", "Conv", "Attention", "LSTM", "Gather", "EmbedLayerNormalization")
    quantizes_bodies = True  # EnableSubgraph
    config: DynamicQuantizeConfig

    def prepare(self, src: Path) -> Prepared:
        rewrite = "Gemm" not in self.config.op_types_to_exclude  # an excluded Gemm must not come back as MatMul
        prepared = prepare(
            src, self.work / "prep", self.report, per_channel=self.config.per_channel, rewrite_gemm=rewrite
        )
        data = self.ctx.datasets.calibration or self.ctx.datasets.train  # optional for dynamic: smoothing only
        smooth_prepared(prepared, data, self.ctx.settings, self.work / "smooth")  # LN->MatMul outliers
        return prepared

    def quantize(self, prepared: Prepared, dst: Path, exclude: list[str]) -> None:
        quantize_with_fallbacks(prepared, lambda: self._quantize_once(prepared, dst, exclude), self.report)

    def _quantize_once(self, prepared: Prepared, dst: Path, exclude: list[str]) -> None:
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        skip = set(self.config.op_types_to_exclude)
        if self.config.conv != "integer":
            skip.add("Conv")
        op_types = [op for op in IntegerOpsRegistry if op not in skip]
        exclude = list(exclude)
        if "Gemm" in self.config.op_types_to_exclude:
            graph = onnx.load(str(prepared.path), load_external_data=False).graph
            exclude += [node.name for node in graph.node if node.op_type == "Gemm"]
        # an excluded Gemm keeps its exclusion under the MatMul name our rewrite (or onnxruntime's) gives it
        names = [*exclude, *(f"{name}_matmul" for name in exclude), *(f"{name}_MatMul" for name in exclude)]
        stage = self.work / "dynamic.onnx"
        quantize_dynamic(
            prepared.path,
            stage,
            op_types_to_quantize=op_types,
            per_channel=self.config.per_channel and prepared.per_channel_ok,
            reduce_range=reduce_range(self.ctx.settings),  # 7-bit weights where u8s8 saturates
            weight_type=QUANT_TYPES[self.config.weight_type],
            nodes_to_exclude=names or None,
            extra_options={"EnableSubgraph": True},  # weights inside If/Loop bodies too
        )
        if self.config.conv == "int8_weights" and "Conv" not in self.config.op_types_to_exclude:
            model = onnx.load(str(stage))
            self.details["conv_int8_storage"] = conv_weights_to_int8(model, set(exclude))
            onnx.save(model, str(stage))
        self.details["bytes_saved_by_compaction"] = compact(stage, dst, original_names(prepared.path))

    def tune(self, prepared: Prepared, evaluator: Evaluator) -> None:
        tune_fusion(self, prepared, evaluator)  # transformer graphs: fused Attention/GELU when faster

    def _has_weight(self, node: onnx.NodeProto, initializers: set[str]) -> bool:
        return node.op_type != "Conv" or self.config.conv != "float"  # int8-storage Convs carry error too


class StaticQuantizer(ModeQuantizer):
    config: StaticQuantizeConfig

    def __init__(self, config: StaticQuantizeConfig, ctx: PassContext, work: Path) -> None:
        super().__init__(config, ctx, work)
        self.calibration: Dataset | None = None
        self.quantizable_ops = static_op_types(config.format)
        self.pad_channels = False  # Conv input channels padded to a multiple of 4 (chosen in tune)
        self.timing_only = False  # quantizing only to time a layout (tune): bias correction does not change speed

    def prepare(self, src: Path) -> Prepared:
        self.calibration, synthetic = calibration_dataset(
            self.ctx, src, self.config.synthetic_calibration, "static quantization"
        )
        self.details["synthetic_calibration"] = synthetic
        prepared = prepare(
            src,
            self.work / "prep",
            self.report,
            per_channel=self.config.per_channel,
            expose_outer_references=self.config.format == "qoperator",
        )
        smooth_prepared(prepared, self.calibration, self.ctx.settings, self.work / "smooth")  # LN->MatMul outliers
        if self.config.keep_small_convs_float:
            prepared.details["small_conv_candidates"] = small_convs(
                prepared.path, self.ctx.settings.quantize.min_conv_reduction
            )
        return prepared

    @cached_property
    def bias_corrector(self) -> BiasCorrector:
        assert self.calibration is not None
        knobs = self.ctx.settings.quantize
        return BiasCorrector(
            self.calibration,
            knobs.bias_correction_samples,
            self.ctx.settings.latency.threads,
            self.work / "bias_correction",
            knobs.activation_memory_mb * 2**20,
            None if knobs.bias_correction_activation_mb is None else knobs.bias_correction_activation_mb * 2**20,
        )

    def tune(self, prepared: Prepared, evaluator: Evaluator) -> None:
        """The search's attempts use onnxruntime's own Conv layout; the faster ones are timed on the result."""
        use_int8(prepared, self)

    def tune_returned(self, prepared: Prepared, evaluator: Evaluator, path: Path, exclude: list[str]) -> bool:
        """Keep tiny-reduction Convs float, or pad Conv input channels, only where that measures faster.

        QLinearConv over a 1-channel stem is several times slower than float NCHWc Conv, but keeping
        it float costs a layout change and a QuantizeLinear after it; which wins depends on the graph
        (static_variants.py). Timed once, on the attempt the search returns.
        """
        return tune_conv_layout(self, prepared, evaluator, path, exclude)

    def returned_kept(self, prepared: Prepared) -> None:
        layout_kept(self)

    def returned_rejected(self, prepared: Prepared, reasons: list[str]) -> None:
        layout_rejected(prepared, self, reasons)

    def quantize(self, prepared: Prepared, dst: Path, exclude: list[str]) -> None:
        quantize_with_fallbacks(prepared, lambda: self._quantize_once(prepared, dst, exclude), self.report)

    def _quantize_once(self, prepared: Prepared, dst: Path, exclude: list[str]) -> None:
        assert self.calibration is not None
        config = self.config
        op_types = None
        if config.op_types_to_exclude:
            op_types = sorted(self.quantizable_ops - set(config.op_types_to_exclude))
        knobs = self.ctx.settings.quantize
        # ranges streamed into the cache below within quant_activation_memory_mb; the reader is a fallback
        with phase("calibration"):
            reader = calibrate_into_cache(prepared, self.calibration, config, op_types, self.ctx, self.work)
        if (
            config.calibration_method == CalibrationMethodName.MINMAX
            and self.ctx.settings.quantize.activation_range_choice
        ):
            with phase("range_refinement"):
                refined = refine_ranges(  # per tensor: min-max or a clipped range, by expected error
                    self.work / "calibration_ranges.json",  # the cache quantize_static reads below
                    prepared.path,
                    self.calibration.take(config.calibration_samples),
                    reader.batch_size,
                    self.ctx.settings.latency.threads,
                    self.work / "ranges",
                    op_types,
                    None
                    if knobs.range_refinement_activation_mb is None
                    else knobs.range_refinement_activation_mb * 2**20,
                )
            if refined is not None:
                self.details["activation_ranges"] = refined.model_dump()
        always = prepared.details.get("always_exclude", [])
        stage = self.work / "static.onnx"
        with phase("quantize_static"):
            quantize_static(
                prepared.path,
                stage,
                reader,
                quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=op_types,
                per_channel=config.per_channel and prepared.per_channel_ok,
                reduce_range=reduce_range(self.ctx.settings),  # 7-bit weights where u8s8 saturates
                activation_type=QUANT_TYPES[config.activation_type],
                weight_type=QUANT_TYPES[config.weight_type],
                nodes_to_exclude=[*exclude, *always] or None,
                calibrate_method=ort_method(config.calibration_method),
                calibration_providers=["CPUExecutionProvider"],
                # ranges depend on the graph and op types, not on the exclusions: calibrate once per search
                calibration_cache_path=self.work / "calibration_ranges.json",
                # a float bias costs 4 bytes per channel, an int32 one 12 (value, scale, zero-point), and
                # onnxruntime fuses both the same way
                extra_options={"QuantizeBias": not config.float_bias, **static_extra_options(config.float_bias)},
            )
        if config.format == "qdq" and self.ctx.settings.quantize.bias_correction and not self.timing_only:
            with phase("bias_correction"):
                self.details["bias_correction"] = self.bias_corrector.apply(prepared.path, stage).model_dump()
        if always:  # convs kept float for speed still get int8 storage (constant-folded at load)
            model = onnx.load(str(stage))
            conv_weights_to_int8(model, set(), only=set(always))
            onnx.save(model, str(stage))
        self.details["conv_channels_padded"] = pad_conv_file(stage) if self.pad_channels else []
        names = original_names(prepared.path)
        with phase("compact"):
            self.details["bytes_saved_by_compaction"] = compact(stage, dst, names, prepared.extra_outputs)


def static_op_types(format: str) -> frozenset[str]:
    """What onnxruntime's static quantizer touches: QDQ format uses both registries, QOperator one."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if format == "qdq":
        return frozenset(QDQRegistry) | frozenset(QLinearOpsRegistry)
    return frozenset(QLinearOpsRegistry)


def small_convs(path: Path, min_reduction: int) -> list[str]:
    """Conv nodes whose per-output reduction (in-channels per group x kernel area) is below `min_reduction`.

    A 1-channel 3x3 stem reduces over 9 values: onnxruntime's QLinearConv is slower than its float
    NCHWc Conv there, so quantizing it costs speed for almost no size.
    """
    model = onnx.load(str(path), load_external_data=False)
    return [node.name for node, dims in conv_weight_dims(model) if node.name and math.prod(dims[1:]) < min_reduction]


class WeightOnlyQuantizer(ModeQuantizer):
    config: WeightOnlyQuantizeConfig

    @property
    def quantizable_ops(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.config.op_types)

    def prepare(self, src: Path) -> Prepared:
        if self.config.algorithm == "gptq":
            self.calibration, synthetic = calibration_dataset(self.ctx, src, False, "gptq weight-only quantization")
        # MatMulNBits has no Gemm form: rewrite Gemm so classifier heads get block-quantized too
        rewrite = "MatMul" in self.config.op_types and "Gemm" not in self.config.op_types_to_exclude
        prepared = prepare(src, self.work / "prep", self.report, optimize=False, rewrite_gemm=rewrite)
        self.op_types = [op for op in self.config.op_types if op not in set(self.config.op_types_to_exclude)]
        if "Gather" in self.op_types:
            # int4 Gather needs opset 21; onnxruntime's quantizer only relabels the opset, which leaves
            # ops whose signature changed (ReduceMean axes, ...) invalid, so convert the graph properly
            path, ok = ensure_opset(prepared.path, self.work / "opset21.onnx", GATHER_INT4_MIN_OPSET, self.report)
            if ok:
                prepared.path = path
            else:
                self.op_types.remove("Gather")
                self.details["gather_skipped"] = f"the model cannot be converted to opset {GATHER_INT4_MIN_OPSET}"
        return prepared

    def quantize(self, prepared: Prepared, dst: Path, exclude: list[str]) -> None:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            GPTQWeightOnlyQuantConfig,
            HQQWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        config = self.config
        op_types = tuple(self.op_types)
        if config.algorithm == "hqq":
            algo = HQQWeightOnlyQuantConfig(
                block_size=config.block_size, bits=config.bits, op_types_to_quantize=op_types
            )
        elif config.algorithm == "gptq":
            reader = DatasetReader(self.calibration, config.calibration_samples)
            algo = GPTQWeightOnlyQuantConfig(
                calibration_data_reader=reader, block_size=config.block_size, op_types_to_quantize=op_types
            )
        else:
            algo = DefaultWeightOnlyQuantConfig(
                block_size=config.block_size,
                is_symmetric=config.symmetric,
                accuracy_level=config.accuracy_level,
                op_types_to_quantize=op_types,
                bits=config.bits,
            )
        model = onnx.load(str(prepared.path))
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=config.bits,
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            accuracy_level=config.accuracy_level,
            nodes_to_exclude=[*exclude, *(f"{name}_matmul" for name in exclude)],
            op_types_to_quantize=op_types,
            algo_config=algo,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)

    def _has_weight(self, node: onnx.NodeProto, initializers: set[str]) -> bool:
        return any(name in initializers for name in node.input)


class Fp16Quantizer(ModeQuantizer):
    """float16 everywhere except excluded nodes; onnxruntime's converter keeps unsafe ops float32."""

    quantizable_ops = _ops(
        "Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "LayerNormalization", "Softmax", "LSTM", "GRU"
    )
    config: Fp16QuantizeConfig

    def prepare(self, src: Path) -> Prepared:
        return prepare(src, self.work / "prep", self.report, optimize=False)

    def quantize(self, prepared: Prepared, dst: Path, exclude: list[str]) -> None:
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        model = onnx.load(str(prepared.path))
        converted = convert_float_to_float16(
            model,
            keep_io_types=self.config.keep_io_types,
            op_block_list=[*DEFAULT_OP_BLOCK_LIST, *self.config.op_types_to_exclude],
            node_block_list=exclude or None,
        )
        onnx.save(converted, str(dst))


class WeightStorageQuantizer(ModeQuantizer):
    """Weights stored int8 (`int8_weights`) or float16 (`fp16_weights`), float compute (weight_storage.py): only
    weight rounding error, bodies included."""

    quantizes_bodies = True
    config: Int8WeightsQuantizeConfig | Fp16WeightsQuantizeConfig

    @property
    def quantizable_ops(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(self.config.op_types) - set(self.config.op_types_to_exclude)

    @property
    def int8(self) -> Int8WeightsQuantizeConfig | None:
        return self.config if isinstance(self.config, Int8WeightsQuantizeConfig) else None

    def prepare(self, src: Path) -> Prepared:
        # no quant_pre_process: the graph keeps its own ops, only its weights change
        per_axis = self.int8 is not None and self.int8.rebuild == "dequantize_linear" and self.int8.per_channel
        prepared = prepare(src, self.work / "prep", self.report, per_channel=per_axis, optimize=False)
        typed = self.work / "prep" / "typed.onnx"
        try:  # value types for the tensors the sensitivity ranking exposes as outputs
            onnx.shape_inference.infer_shapes_path(str(prepared.path), str(typed))
            prepared.path = typed
        except Exception as exc:  # onnx's inference raises many types; the ranking then sees fewer tensors
            self.report(f"shape inference failed ({type(exc).__name__}); ranking without inferred types")
        return prepared

    def quantize(self, prepared: Prepared, dst: Path, exclude: list[str]) -> None:
        model = onnx.load(str(prepared.path))
        int8 = self.int8
        stored = store_weights(
            model,
            dtype="int8" if int8 is not None else "float16",
            op_types=self.quantizable_ops,
            exclude=set(exclude),
            min_elements=self.ctx.settings.quantize.weight_storage_min_elements,
            per_channel=int8 is None or (int8.per_channel and prepared.per_channel_ok),
            rebuild=int8.rebuild if int8 is not None else "cast_mul",
        )
        self.details["weight_storage"] = {"dtype": "int8" if int8 is not None else "float16", **stored.as_dict()}
        if int8 is not None and int8.kept_out_of_int8 == "float16" and set(exclude) - set(int8.nodes_to_exclude):
            # the nodes the search keeps out of int8 get float16 weights; the user's nodes_to_exclude stay float32
            half = store_weights(
                model,
                dtype="float16",
                op_types=self.quantizable_ops,
                exclude=set(int8.nodes_to_exclude),
                min_elements=self.ctx.settings.quantize.weight_storage_min_elements,
            )
            self.details["weight_storage"]["float16"] = half.as_dict()
        stage = self.work / "stored_weights.onnx"
        onnx.save(model, str(stage))
        self.details["bytes_saved_by_compaction"] = compact(stage, dst, original_names(prepared.path))

    def candidate_nodes(self, prepared: Prepared) -> list[str]:
        model = onnx.load(str(prepared.path), load_external_data=False)
        minimum = self.ctx.settings.quantize.weight_storage_min_elements
        return weight_nodes(model, self.quantizable_ops, minimum)


def make_quantizer(config: ModeConfig, ctx: PassContext, work: Path) -> ModeQuantizer:
    classes: dict[str, type[ModeQuantizer]] = {
        "dynamic": DynamicQuantizer,
        "static": StaticQuantizer,
        "weight_only": WeightOnlyQuantizer,
        "int8_weights": WeightStorageQuantizer,
        "fp16_weights": WeightStorageQuantizer,
        "fp16": Fp16Quantizer,
    }
    return classes[config.mode](config, ctx, work)
