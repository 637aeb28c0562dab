"""`python -m onnx_compress ...` is the `onnx-compress` command."""

from onnx_compress.cli import main

main()
