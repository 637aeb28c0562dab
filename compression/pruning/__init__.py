"""Pruning of ONNX graphs without the training framework: unstructured, N:M and structured channel removal.

`dependency` finds channel groups coupled across the graph, `importance` scores their channels,
`rewrite` removes them physically, `structured` ties the three together; `unstructured` zeroes weights.
"""
