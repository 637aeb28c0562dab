"""Training ONNX graphs with torch: execute a graph with its float weights as parameters, write them back.

Importing this package imports torch; the engine imports it only when a `distill` step runs, so the
service and the other passes start without torch installed.
"""
