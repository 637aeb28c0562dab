"""int8 dynamic quantization: weights stored int8, activations quantized at run time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import onnx_ir as ir
from onnxruntime.quantization import QuantType, quantize_dynamic

from compression.quantization.graph_prep import gemm_to_matmul
from compression.quantization.preprocess import preprocess

WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


def dynamic_quantize(
    src: Path,
    dst: Path,
    work: Path,
    *,
    weight_type: Literal["int8", "uint8"],
    per_channel: bool,
    nodes_to_exclude: list[str],
    op_types_to_exclude: list[str],
    report,
) -> dict[str, int]:
    prepared = preprocess(src, work / "preprocessed.onnx", report)
    model = ir.load(prepared)
    rewritten = gemm_to_matmul(model)
    if rewritten:
        report(f"rewrote {rewritten} Gemm node(s) as MatMul+Add so their weights get int8 kernels")
    rewritten_path = work / "gemm_rewritten.onnx"
    ir.save(model, rewritten_path)
    op_types = None
    if op_types_to_exclude:
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        op_types = [op for op in IntegerOpsRegistry if op not in set(op_types_to_exclude)]
    quantize_dynamic(
        rewritten_path,
        dst,
        op_types_to_quantize=op_types,
        per_channel=per_channel,
        weight_type=WEIGHT_TYPES[weight_type],
        # excluded Gemm nodes keep their exclusion under the MatMul name the rewrite gave them
        nodes_to_exclude=[*nodes_to_exclude, *(f"{name}_matmul" for name in nodes_to_exclude)] or None,
    )
    return {"gemm_rewritten": rewritten}
