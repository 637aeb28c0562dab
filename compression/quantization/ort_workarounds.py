"""Options that steer onnxruntime's static quantizer around its known bugs (onnxruntime 1.2x-1.3x).

`_adjust_weight_scale_for_int32_bias` (qdq_quantizer.py) widens weight scales so that an int32 bias fits,
and indexes the bias per output channel: a Gemm bias of shape [1, N] makes it fail with "The truth value
of an array with more than one element is ambiguous", one of shape [1] with an IndexError (graphs from
jax2onnx and tf2onnx carry both). With float biases (our default) nothing is quantized to int32, so the
adjustment only coarsens weight scales: it is switched off. Int32 biases get their shapes flattened to
[N] in preparation (graph_prep.flatten_gemm_biases) instead.
"""

from __future__ import annotations

from typing import Any


def static_extra_options(float_bias: bool) -> dict[str, Any]:
    """extra_options for quantize_static beyond the caller's own (QuantizeBias and friends)."""
    options: dict[str, Any] = {}
    if float_bias:
        options["QDQDisableWeightAdjustForInt32Bias"] = True
    return options
