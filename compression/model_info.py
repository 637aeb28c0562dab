"""Inspect and validate ONNX files on disk without holding more than the graph structure in memory."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import onnx
from pydantic import BaseModel

from compression.errors import InvalidModelError


class TensorSpec(BaseModel):
    name: str
    shape: list[int | str | None]
    dtype: str


class ModelInfo(BaseModel):
    opset: int
    ir_version: int
    producer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_counts: dict[str, int]


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    tensor_type = value_info.type.tensor_type
    if not tensor_type.HasField("shape"):
        return []
    dims: list[int | str | None] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return dims


def _spec(value_info: onnx.ValueInfoProto) -> TensorSpec:
    elem_type = value_info.type.tensor_type.elem_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "undefined"
    return TensorSpec(name=value_info.name, shape=_dims(value_info), dtype=dtype)


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """All nodes, including those inside If/Loop/Scan subgraphs."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_nodes(sub)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (old exporters list weights as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return 0


def describe(model: onnx.ModelProto) -> ModelInfo:
    return ModelInfo(
        opset=default_opset(model),
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        inputs=[_spec(value) for value in graph_inputs(model)],
        outputs=[_spec(value) for value in model.graph.output],
        op_counts=dict(Counter(node.op_type for node in iter_nodes(model.graph))),
    )


def validate_model(path: Path) -> ModelInfo:
    """Check an uploaded file is a loadable ONNX model; the checker takes the path so >2 GB models work."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"not a valid ONNX model: {_first_line(exc)}") from exc
    except Exception as exc:  # protobuf DecodeError and friends on random bytes or truncated files
        raise InvalidModelError(f"not a valid ONNX model: could not parse the file ({_first_line(exc)})") from exc
    model = onnx.load(str(path), load_external_data=False)
    if not model.graph.output:
        raise InvalidModelError("not a valid ONNX model: the graph has no outputs")
    return describe(model)


def inspect_model(path: Path) -> ModelInfo:
    return describe(onnx.load(str(path), load_external_data=False))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]
