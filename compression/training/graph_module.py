"""An ONNX graph run node by node with torch ops, its float weights as `nn.Parameter`s.

This is what lets distillation train the student's own graph: no export round trip, no converter;
after training, `trained_values()` + `weights.write_back` put the new weights into the same graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from compression.errors import CompressionError, DatasetMismatchError, UnsupportedOperatorError
from compression.training import ops_math, ops_nn, ops_rnn, ops_shape  # noqa: F401  (registers the ops)
from compression.training.op_registry import NodeInfo, OpFn, check_supported, decode_attrs, lookup, to_torch
from compression.training.ops_shape import constant_value
from compression.training.weights import WeightRoles, classify, constant_tensor


@dataclass
class _Step:
    fn: OpFn
    info: NodeInfo
    inputs: list[str]
    outputs: list[str]
    release: list[str]


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return 1


class OnnxGraphModule(nn.Module):
    """Runs `model` on torch tensors; `forward` returns the graph outputs plus any `extra` intermediate tensors."""

    def __init__(
        self,
        model: onnx.ModelProto,
        frozen: Iterable[str] = (),
        bn_train: bool = True,
        extra_outputs: Sequence[str] = (),
    ) -> None:
        super().__init__()
        graph = model.graph
        check_supported(graph.node)
        opset = default_opset(model)
        self.roles: WeightRoles = classify(graph, frozen)
        initializers = {t.name: t for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializers]
        self.output_names = [v.name for v in graph.output]
        self.extra_outputs = list(extra_outputs)
        self._param_index = {name: i for i, name in enumerate(self.roles.parameters)}
        self._stat_index = {name: i for i, name in enumerate(self.roles.statistics)}
        trained = set(self.roles.trained)
        constant_arrays: dict[str, np.ndarray] = {
            name: numpy_helper.to_array(t) for name, t in initializers.items() if name not in trained
        }
        trained_arrays = {name: numpy_helper.to_array(t) for name, t in initializers.items() if name in trained}
        for node in graph.node:
            if node.op_type == "Constant" and node.output[0] in trained:
                trained_arrays[node.output[0]] = numpy_helper.to_array(constant_tensor(node))
        self.weights = nn.ParameterList(
            [nn.Parameter(to_torch(trained_arrays[name])) for name in self.roles.parameters]
        )
        for name, index in self._stat_index.items():
            self.register_buffer(f"stat_{index}", to_torch(trained_arrays[name]))
        self._constants: dict[str, torch.Tensor] = {name: to_torch(a) for name, a in constant_arrays.items()}
        self._steps: list[_Step] = []
        for node in graph.node:
            info = NodeInfo(
                op_type=node.op_type,
                name=node.name or node.output[0],
                opset=opset,
                attrs=decode_attrs(node),
                n_outputs=len(node.output),
                bn_train=bn_train,
            )
            if node.op_type == "Constant":
                if node.output[0] not in trained:
                    self._constants[node.output[0]] = constant_value([], info)
                continue
            fn = lookup(node.op_type)
            if fn is None:  # check_supported already refused these; kept for type narrowing
                raise UnsupportedOperatorError(f"unsupported operator {node.op_type}")
            self._steps.append(_Step(fn, info, list(node.input), list(node.output), []))
        self._plan_release()

    def _plan_release(self) -> None:
        """Drop each intermediate after its last use, so long graphs do not hold every activation twice."""
        keep = set(self.output_names) | set(self.extra_outputs)
        last_use: dict[str, int] = {}
        for index, step in enumerate(self._steps):
            for name in step.inputs:
                last_use[name] = index
        produced = {name for step in self._steps for name in step.outputs}
        for name, index in last_use.items():
            if name in produced and name not in keep:
                self._steps[index].release.append(name)

    def set_extra_outputs(self, names: Sequence[str]) -> None:
        produced = {name for step in self._steps for name in step.outputs} | set(self.input_names)
        unknown = [name for name in names if name not in produced]
        if unknown:
            raise CompressionError(f"hints name tensors {unknown} that the student graph does not have")
        self.extra_outputs = list(names)
        for step in self._steps:
            step.release.clear()
        self._plan_release()

    def tensor(self, name: str) -> torch.Tensor:
        if name in self._param_index:
            return self.weights[self._param_index[name]]
        if name in self._stat_index:
            return getattr(self, f"stat_{self._stat_index[name]}")
        return self._constants[name]

    def forward(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise DatasetMismatchError(f"no data for the student's inputs {missing}")
        values: dict[str, torch.Tensor] = dict(self._constants)
        for name in self._param_index:
            values[name] = self.tensor(name)
        for name in self._stat_index:
            values[name] = self.tensor(name)
        values.update(feeds)
        for step in self._steps:
            step.info.training = self.training
            args = [values[name] if name else None for name in step.inputs]
            result = step.fn(args, step.info)
            results = [result] if isinstance(result, torch.Tensor) else list(result)
            for name, value in zip(step.outputs, results, strict=False):
                if name:
                    values[name] = value
            for name in step.release:
                values.pop(name, None)
        wanted = [*self.output_names, *self.extra_outputs]
        return {name: values[name] for name in wanted}

    def trained_values(self) -> dict[str, np.ndarray]:
        """Current parameters and statistics as numpy, keyed by their graph names, for `write_back`."""
        return {name: self.tensor(name).detach().cpu().numpy() for name in self.roles.trained}
