"""Quantization methods; each mode is a module, dispatched by the quantize pass."""
