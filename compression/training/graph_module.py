"""An ONNX graph run node by node with torch ops, its float weights as `nn.Parameter`s.

This is what lets distillation train the student's own graph: no export round trip, no converter;
after training, `trained_values()` + `weights.write_back` put the new weights into the same graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from compression.errors import CompressionError, DatasetMismatchError, InvalidModelError
from compression.training import (  # noqa: F401  (registers the ops)
    ops_control,
    ops_math,
    ops_nn,
    ops_quant,
    ops_rnn,
    ops_shape,
)
from compression.training.compiled_graph import CompiledGraph, CompileOptions
from compression.training.op_registry import DEFAULT_MAX_LOOP_ITERATIONS, check_supported, to_torch
from compression.training.scopes import walk_graphs
from compression.training.weights import WeightRoles, classify, constant_tensor


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    return 1


def _trained_arrays(graph: onnx.GraphProto, trained: set[str]) -> dict[str, np.ndarray]:
    """Initial values of the trained tensors, wherever (main graph or a body) they are defined."""
    arrays: dict[str, np.ndarray] = {}
    for scope in walk_graphs(graph):
        for tensor in scope.initializer:
            if tensor.name in trained:
                arrays[tensor.name] = numpy_helper.to_array(tensor)
        for node in scope.node:
            if node.op_type == "Constant" and node.output[0] in trained:
                arrays[node.output[0]] = numpy_helper.to_array(constant_tensor(node))
    return arrays


class OnnxGraphModule(nn.Module):
    """Runs `model` on torch tensors; `forward` returns the graph outputs plus any `extra` intermediate tensors.

    If/Loop/Scan run their bodies with the same ops; a Loop or Scan that would run more than
    `max_loop_iterations` iterations fails with a `CompressionError` naming the node and the limit.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        frozen: Iterable[str] = (),
        bn_train: bool = True,
        extra_outputs: Sequence[str] = (),
        max_loop_iterations: int = DEFAULT_MAX_LOOP_ITERATIONS,
        trainable: Iterable[str] = (),
    ) -> None:
        super().__init__()
        graph = model.graph
        check_supported(graph)
        self.roles: WeightRoles = classify(graph, frozen, trainable)
        initializers = {t.name for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializers]
        self.output_names = [v.name for v in graph.output]
        self.extra_outputs = list(extra_outputs)
        self._param_index = {name: i for i, name in enumerate(self.roles.parameters)}
        self._stat_index = {name: i for i, name in enumerate(self.roles.statistics)}
        trained = set(self.roles.trained)
        trained_arrays = _trained_arrays(graph, trained)
        self.weights = nn.ParameterList(
            [nn.Parameter(to_torch(trained_arrays[name])) for name in self.roles.parameters]
        )
        for name, index in self._stat_index.items():
            self.register_buffer(f"stat_{index}", to_torch(trained_arrays[name]))
        options = CompileOptions(default_opset(model), bn_train, frozenset(trained), max_loop_iterations)
        self._graph = CompiledGraph(graph, options)
        undefined = sorted(self._graph.free_names - trained - set(self.input_names))
        if undefined:
            raise InvalidModelError(f"the student graph reads tensors that nothing defines: {undefined[:10]}")
        self._graph.keep(self.extra_outputs)

    def set_extra_outputs(self, names: Sequence[str]) -> None:
        produced = self._graph.produced_names() | set(self.input_names)
        unknown = [name for name in names if name not in produced]
        if unknown:
            raise CompressionError(f"hints name tensors {unknown} that the student graph does not have")
        self.extra_outputs = list(names)
        self._graph.keep(self.extra_outputs)

    def tensor(self, name: str) -> torch.Tensor:
        if name in self._param_index:
            return self.weights[self._param_index[name]]
        if name in self._stat_index:
            return getattr(self, f"stat_{self._stat_index[name]}")
        return self._graph.constants[name]

    def forward(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise DatasetMismatchError(f"no data for the student's inputs {missing}")
        values: dict[str, torch.Tensor] = dict(self._graph.constants)
        for name in self._param_index:
            values[name] = self.tensor(name)
        for name in self._stat_index:
            values[name] = self.tensor(name)
        values.update(feeds)
        self._graph.execute(values, self.training)
        wanted = [*self.output_names, *self.extra_outputs]
        return {name: values[name] for name in wanted}

    def trained_values(self) -> dict[str, np.ndarray]:
        """Current parameters and statistics as numpy, keyed by their graph names, for `write_back`."""
        return {name: self.tensor(name).detach().cpu().numpy() for name in self.roles.trained}
