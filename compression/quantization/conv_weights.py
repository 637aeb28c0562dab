"""int8 storage for Conv weights only, float compute: dynamic's `conv: int8_weights` and the Convs static keeps
float for speed.

onnxruntime's dynamic ConvInteger runs several times slower than float Conv on CPU; with the weights stored int8
and rebuilt by a constant-folded `Cast * scale` (compression/quantization/weight_storage.py, which stores every
kind of weight), the Conv keeps its fast NCHWc kernels.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from compression.quantization.weight_storage import store_weights


def conv_weights_to_int8(model: onnx.ModelProto | ir.Model, exclude: set[str], only: set[str] | None = None) -> int:
    """Store the float32 Conv weights (all, or those of the Convs named in `only`; none of `exclude`) as int8 with
    a per-output-channel scale, in place, bodies included; returns how many weights were stored."""
    if isinstance(model, onnx.ModelProto):
        return store_weights(model, op_types={"Conv"}, exclude=exclude, only=only).tensors
    proto = ir.to_proto(model)
    stored = store_weights(proto, op_types={"Conv"}, exclude=exclude, only=only).tensors
    if stored:
        model.graph = ir.from_proto(proto).graph
    return stored
