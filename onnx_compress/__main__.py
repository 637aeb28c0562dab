"""`python -m onnx_compress ...` is the `onnx-compress` command."""

from onnx_compress.cli import main

if __name__ == "__main__":
    main()
