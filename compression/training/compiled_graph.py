"""One ONNX graph (the main graph or an If/Loop/Scan body) compiled to a list of torch op calls.

A body reads names of enclosing scopes. The compiler finds each body's free names (read but not defined
inside it, nested bodies included) and appends them to the inputs of the node that owns the body, so
the owner receives them like any other input (`NodeInfo.captured` lists them) and the enclosing graph
keeps them alive until that node has run. Trained tensors (parameters, statistics) are never local to a
body: they are free names all the way up, where the module serves them, so training a weight that only
a branch uses updates the one `nn.Parameter` under its graph name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import onnx
import torch
from onnx import numpy_helper

from compression.errors import UnsupportedOperatorError
from compression.training.op_registry import NodeInfo, OpFn, Tensor, decode_attrs, lookup, to_torch
from compression.training.ops_math import TORCH_DTYPES
from compression.training.ops_shape import constant_value


@dataclass(frozen=True)
class CompileOptions:
    """What every scope of one model shares: opset, BatchNormalization mode, served names, loop bound."""

    opset: int
    bn_train: bool
    served: frozenset[str]  # names the module provides in every scope (trained tensors)
    max_loop_iterations: int


@dataclass
class Step:
    fn: OpFn
    info: NodeInfo
    inputs: list[str]
    outputs: list[str]
    release: list[str]


class CompiledGraph:
    """Steps, local constants and free names of one graph; `execute` runs it on a dict of named tensors."""

    def __init__(self, graph: onnx.GraphProto, options: CompileOptions) -> None:
        self.name = graph.name
        self.input_names = [v.name for v in graph.input]
        self.output_names = [v.name for v in graph.output]
        self.output_dtypes = [_dtype(v) for v in graph.output]
        self.output_shapes = [_static_shape(v) for v in graph.output]
        self.constants: dict[str, Tensor] = {
            t.name: to_torch(numpy_helper.to_array(t)) for t in graph.initializer if t.name not in options.served
        }
        self.steps: list[Step] = []
        for node in graph.node:
            info = NodeInfo(
                op_type=node.op_type,
                name=node.name or node.output[0],
                opset=options.opset,
                attrs=decode_attrs(node),
                n_outputs=len(node.output),
                bn_train=options.bn_train,
                max_loop_iterations=options.max_loop_iterations,
            )
            if node.op_type == "Constant":
                if node.output[0] not in options.served:
                    self.constants[node.output[0]] = constant_value([], info)
                continue
            fn = lookup(node.op_type)
            if fn is None:  # check_supported refuses these before compiling; kept for type narrowing
                raise UnsupportedOperatorError(f"unsupported operator {node.op_type}")
            captured: set[str] = set()
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    body = CompiledGraph(attribute.g, options)
                    info.attrs[attribute.name] = body
                    captured |= body.free_names
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    bodies = [CompiledGraph(g, options) for g in attribute.graphs]
                    info.attrs[attribute.name] = bodies
                    captured |= {name for body in bodies for name in body.free_names}
            info.captured = sorted(captured)
            self.steps.append(Step(fn, info, [*node.input, *info.captured], list(node.output), []))
        self.free_names = self._free_names()
        self._plan_release(())

    def _free_names(self) -> frozenset[str]:
        """Names read here (nested bodies' free names included, via their owner's inputs) but not defined here."""
        defined = set(self.input_names) | set(self.constants) | self.produced_names()
        read = set(self.output_names) | {name for step in self.steps for name in step.inputs if name}
        return frozenset(read - defined)

    def _plan_release(self, keep: Iterable[str]) -> None:
        """Drop each intermediate after its last use, so long graphs do not hold every activation twice."""
        kept = set(self.output_names) | set(keep)
        last_use: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            step.release.clear()
            for name in step.inputs:
                last_use[name] = index
        produced = self.produced_names()
        for name, index in last_use.items():
            if name in produced and name not in kept:
                self.steps[index].release.append(name)

    def produced_names(self) -> set[str]:
        return {name for step in self.steps for name in step.outputs if name}

    def keep(self, names: Iterable[str]) -> None:
        """Also keep these intermediates to the end of a run (hint and logit tensors)."""
        self._plan_release(names)

    def execute(self, values: dict[str, Tensor], training: bool) -> None:
        """Run every step on `values` (seeded with inputs, constants and served tensors), in place."""
        for step in self.steps:
            step.info.training = training
            args = [values[name] if name else None for name in step.inputs]
            result = step.fn(args, step.info)
            results = [result] if isinstance(result, torch.Tensor) else list(result)
            for name, value in zip(step.outputs, results, strict=False):
                if name:
                    values[name] = value
            for name in step.release:
                values.pop(name, None)

    def run_body(self, scope: Mapping[str, Tensor], inputs: Sequence[Tensor], training: bool) -> list[Tensor]:
        """Run as a body: `scope` holds the captured outer names, `inputs` bind the body's formal inputs."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f"body {self.name!r} takes {len(self.input_names)} inputs, got {len(inputs)}")
        values: dict[str, Tensor] = dict(self.constants)
        values.update(scope)
        values.update(zip(self.input_names, inputs, strict=True))
        self.execute(values, training)
        return [values[name] for name in self.output_names]


def _dtype(value: onnx.ValueInfoProto) -> torch.dtype:
    elem_type = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else 0
    return TORCH_DTYPES.get(elem_type, torch.float32)


def _static_shape(value: onnx.ValueInfoProto) -> list[int] | None:
    """The declared shape when every dimension is a number (empty scan outputs take it), else None."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return None
    dims = value.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return [d.dim_value for d in dims]
