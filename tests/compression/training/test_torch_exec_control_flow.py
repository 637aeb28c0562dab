"""If, Loop, Scan and ReverseSequence in the torch executor: onnxruntime's results, gradients into body weights,
write-back of weights that live inside bodies, the iteration bound, and a capability check that sees bodies."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compression.errors import UnsupportedOperatorError
from compression.training.graph_module import OnnxGraphModule
from compression.training.ops_control import LoopLimitError
from compression.training.scopes import walk_graphs
from compression.training.weights import write_back

TOLERANCE = 1e-4
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:  # noqa: ANN001
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _f(name: str, shape: list | None = None) -> onnx.ValueInfoProto:  # noqa: ANN001
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _i(name: str, shape: list | None = None, dtype: int = TensorProto.INT64) -> onnx.ValueInfoProto:  # noqa: ANN001
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((0.5 * RNG.standard_normal(shape)).astype(np.float32), name)


def _const(output: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], value=numpy_helper.from_array(array, output + "_value"))


def _run_both(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[dict, dict]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, feeds), strict=True))
    module = OnnxGraphModule(model).eval()
    with torch.no_grad():
        ours = module({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
    return {n: ours[n].numpy() for n in names}, reference


def _assert_matches(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    ours, reference = _run_both(model, feeds)
    for name, want in reference.items():
        got = ours[name]
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        if want.size:
            assert np.abs(got.astype(np.float64) - want.astype(np.float64)).max() <= TOLERANCE, name


def _if_model() -> onnx.ModelProto:
    """y = If(sum(x) > 0): then x @ W_top + b_branch (a Constant in the branch), else a nested If on x's width.

    W_top is a main-graph initializer read only inside the then branch; the else branch holds its own
    initializer (W_else) and a nested If that reads an outer-scope tensor (`h`, produced by the main graph).
    """
    then_branch = helper.make_graph(
        [
            _const("b_branch", (0.5 * RNG.standard_normal(4)).astype(np.float32)),
            helper.make_node("MatMul", ["x", "W_top"], ["then_mm"]),
            helper.make_node("Add", ["then_mm", "b_branch"], ["then_y"]),
        ],
        "then",
        [],
        [_f("then_y")],
    )
    inner_then = helper.make_graph([helper.make_node("Relu", ["h"], ["inner_y"])], "inner_then", [], [_f("inner_y")])
    inner_else = helper.make_graph([helper.make_node("Neg", ["h"], ["inner_z"])], "inner_else", [], [_f("inner_z")])
    else_branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W_else"], ["else_mm"]),
            helper.make_node("Shape", ["x"], ["x_shape"]),
            helper.make_node("Gather", ["x_shape", "one"], ["width"], axis=0),
            helper.make_node("Equal", ["width", "three"], ["is_three"]),
            helper.make_node("If", ["is_three"], ["inner"], then_branch=inner_then, else_branch=inner_else),
            helper.make_node("Add", ["else_mm", "inner"], ["else_y"]),
        ],
        "else",
        [],
        [_f("else_y")],
        [_w("W_else", 3, 4)],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "W_h"], ["h"]),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    inits = [
        _w("W_top", 3, 4),
        _w("W_h", 3, 4),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        numpy_helper.from_array(np.array(3, dtype=np.int64), "three"),
    ]
    return _model(nodes, [_f("x", [2, 3])], [_f("y", [2, 4])], inits)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then", "else"])
def test_if_matches_onnxruntime_on_both_branches(sign: float) -> None:
    x = (sign * np.abs(RNG.standard_normal((2, 3)))).astype(np.float32)
    _assert_matches(_if_model(), {"x": x})


def test_weights_inside_if_branches_train_and_are_written_back() -> None:
    """W_top (read only in a branch), b_branch (a Constant in a branch) and W_else (a branch initializer)."""
    model = _if_model()
    module = OnnxGraphModule(model).train()
    assert {"W_top", "b_branch", "W_else", "W_h"} <= set(module.roles.parameters)
    x = torch.from_numpy(np.abs(RNG.standard_normal((2, 3))).astype(np.float32))
    module({"x": x})["y"].square().sum().backward()
    grads = dict(zip(module.roles.parameters, (p.grad for p in module.parameters()), strict=True))
    assert grads["W_top"] is not None and grads["W_top"].abs().sum() > 0
    assert grads["b_branch"] is not None and grads["b_branch"].abs().sum() > 0
    assert grads["W_else"] is None  # the branch not taken gets no gradient
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.25)
        expected = {k: v.numpy() for k, v in module({"x": x}).items()}
        negative = -x
        expected_else = module({"x": negative})["y"].numpy()
    written = write_back(model, module.trained_values())
    session = ort.InferenceSession(written.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.abs(session.run(["y"], {"x": x.numpy()})[0] - expected["y"]).max() <= TOLERANCE
    assert np.abs(session.run(["y"], {"x": negative.numpy()})[0] - expected_else).max() <= TOLERANCE
    assert len(written.graph.node) == len(model.graph.node)


def _loop_model(trip: bool, cond: bool) -> onnx.ModelProto:
    """Loop carrying a running state s (s = tanh(s @ W_loop + x_i)) and a counter; scans out s and i*2.

    The body reads x (outer scope, one row per iteration via Gather) and W_loop (a main-graph initializer),
    and stops when the counter reaches `stop` (an input) if the loop has a condition.
    """
    body = helper.make_graph(
        [
            helper.make_node("Gather", ["x", "iter"], ["row"], axis=0),
            helper.make_node("MatMul", ["s_in", "W_loop"], ["mixed"]),
            helper.make_node("Add", ["mixed", "row"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["s_out"]),
            helper.make_node("Add", ["count_in", "one"], ["count_out"]),
            helper.make_node("Less", ["count_out", "stop"], ["cond_out"]),
            helper.make_node("Mul", ["iter", "two"], ["doubled"]),
            helper.make_node("Identity", ["s_out"], ["s_scan"]),
        ],
        "body",
        [_i("iter", []), _i("cond_in", [], TensorProto.BOOL), _f("s_in", [2, 4]), _i("count_in", [])],
        [
            _i("cond_out", [], TensorProto.BOOL),
            _f("s_out", [2, 4]),
            _i("count_out", []),
            _f("s_scan", [2, 4]),
            _i("doubled", []),
        ],
    )
    loop_inputs = ["M" if trip else "", "keep" if cond else "", "s0", "zero"]
    nodes = [helper.make_node("Loop", loop_inputs, ["s_final", "count", "states", "doubles"], body=body)]
    if cond:
        nodes.insert(0, helper.make_node("Less", ["zero", "stop"], ["keep"]))
    inputs = [_f("x", [6, 2, 4]), _f("s0", [2, 4]), _i("stop", [])]
    if trip:
        inputs.append(_i("M", []))
    outputs = [_f("s_final", [2, 4]), _i("count", []), _f("states", ["n", 2, 4]), _i("doubles", ["n"])]
    inits = [
        _w("W_loop", 4, 4),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        numpy_helper.from_array(np.array(2, dtype=np.int64), "two"),
    ]
    return _model(nodes, inputs, outputs, inits)


def _loop_feeds(stop: int, trip: int | None) -> dict[str, np.ndarray]:
    feeds = {
        "x": RNG.standard_normal((6, 2, 4)).astype(np.float32),
        "s0": RNG.standard_normal((2, 4)).astype(np.float32),
        "stop": np.array(stop, dtype=np.int64),
    }
    if trip is not None:
        feeds["M"] = np.array(trip, dtype=np.int64)
    return feeds


@pytest.mark.parametrize(
    ("trip", "cond", "stop", "trip_count"),
    [
        (True, True, 6, 4),  # the trip count ends it
        (True, True, 3, 6),  # the condition ends it
        (False, True, 5, None),  # while loop: data-dependent trip count
        (True, False, 100, 5),  # for loop: the body's condition output is honoured, stop is far
        (True, True, 0, 6),  # zero iterations: empty scan outputs
    ],
    ids=["trip-ends", "cond-ends", "while", "for", "zero-iterations"],
)
def test_loop_matches_onnxruntime(trip: bool, cond: bool, stop: int, trip_count: int | None) -> None:
    _assert_matches(_loop_model(trip, cond), _loop_feeds(stop, trip_count))


def test_loop_state_trains_a_weight_read_in_the_body() -> None:
    module = OnnxGraphModule(_loop_model(trip=False, cond=True)).train()
    feeds = {k: torch.from_numpy(v) for k, v in _loop_feeds(stop=4, trip=None).items()}
    out = module(feeds)
    (out["s_final"].square().sum() + out["states"].sum()).backward()
    weight = module.weights[module.roles.parameters.index("W_loop")]
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def _as_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every float tensor, value and Constant in float64 (for torch's gradcheck)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for scope in walk_graphs(out.graph):
        for tensor in scope.initializer:
            if tensor.data_type == TensorProto.FLOAT:
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))
        for node in scope.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == TensorProto.FLOAT:
                    array = numpy_helper.to_array(attribute.t).astype(np.float64)
                    attribute.t.CopyFrom(numpy_helper.from_array(array, attribute.t.name))
        for value in [*scope.input, *scope.output, *scope.value_info]:
            if value.type.tensor_type.elem_type == TensorProto.FLOAT:
                value.type.tensor_type.elem_type = TensorProto.DOUBLE
    return out


@pytest.mark.parametrize("case", ["if-then", "if-else", "loop", "scan"])
def test_control_flow_gradients_match_finite_differences(case: str) -> None:
    """torch.autograd.gradcheck (float64) of every output w.r.t. every weight and float input."""
    models = {
        "if-then": (_if_model, {"x": np.abs(RNG.standard_normal((2, 3)))}),
        "if-else": (_if_model, {"x": -np.abs(RNG.standard_normal((2, 3)))}),
        "loop": (
            lambda: _loop_model(trip=False, cond=True),
            {"x": RNG.standard_normal((6, 2, 4)), "s0": RNG.standard_normal((2, 4)), "stop": np.array(4)},
        ),
        "scan": (
            lambda: _scan_model([1, 0], [1], [2]),
            {
                "state0": RNG.standard_normal((2, 3)),
                "a": RNG.standard_normal((2, 5, 4)),
                "b": RNG.standard_normal((5, 2, 3)),
            },
        ),
    }
    build, arrays = models[case]
    module = OnnxGraphModule(_as_double(build())).eval()
    weights = dict(module.named_parameters())
    feeds = {name: torch.from_numpy(array) for name, array in arrays.items()}
    float_inputs = [name for name, value in feeds.items() if value.is_floating_point()]

    def outputs(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        call_feeds = {**feeds, **dict(zip(float_inputs, args[len(weights) :], strict=True))}
        out = torch.func.functional_call(module, dict(zip(weights, args[: len(weights)], strict=True)), (call_feeds,))
        return tuple(value for value in out.values() if value.is_floating_point())

    args = [w.detach().clone().requires_grad_() for w in weights.values()]
    args += [feeds[name].clone().requires_grad_() for name in float_inputs]
    assert torch.autograd.gradcheck(outputs, args, eps=1e-6, atol=1e-6)


def test_loop_past_the_iteration_limit_fails_with_a_clear_error() -> None:
    model = _loop_model(trip=False, cond=True)
    feeds = {k: torch.from_numpy(v) for k, v in _loop_feeds(stop=5, trip=None).items()}
    assert OnnxGraphModule(model, max_loop_iterations=5)(feeds)["count"].item() == 5
    with pytest.raises(LoopLimitError, match="distill_max_loop_iterations") as caught:
        OnnxGraphModule(model, max_loop_iterations=4)(feeds)
    assert "Loop node" in caught.value.message and "4 iterations" in caught.value.message
    for_loop = _loop_model(trip=True, cond=False)
    with pytest.raises(LoopLimitError, match="more than 3 iterations"):
        OnnxGraphModule(for_loop, max_loop_iterations=3)({**feeds, "M": torch.tensor(4)})


def test_scan_past_the_iteration_limit_fails_before_running() -> None:
    feeds = {
        "state0": torch.zeros(2, 3),
        "a": torch.zeros(2, 5, 4),
        "b": torch.zeros(5, 2, 3),
    }
    model = _scan_model([0, 0], [0], [0])
    assert OnnxGraphModule(model, max_loop_iterations=5)(feeds)["gates"].shape == (5, 2, 3)
    with pytest.raises(LoopLimitError, match="Scan node"):
        OnnxGraphModule(model, max_loop_iterations=4)(feeds)


def _scan_model(directions: list[int], out_directions: list[int], out_axes: list[int]) -> onnx.ModelProto:
    """Scan over two sequences (time on axis 1 and axis 0): state = state * decay + a_t @ W_scan + b_t."""
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["a_t", "W_scan"], ["proj"]),
            helper.make_node("Mul", ["state_in", "decay"], ["kept"]),
            helper.make_node("Add", ["kept", "proj"], ["partial"]),
            helper.make_node("Add", ["partial", "b_t"], ["state_out"]),
            helper.make_node("Sigmoid", ["state_out"], ["gate"]),
        ],
        "scan_body",
        [_f("state_in", [2, 3]), _f("a_t", [2, 4]), _f("b_t", [2, 3])],
        [_f("state_out", [2, 3]), _f("gate", [2, 3])],
    )
    node = helper.make_node(
        "Scan",
        ["state0", "a", "b"],
        ["state_final", "gates"],
        body=body,
        num_scan_inputs=2,
        scan_input_axes=[1, 0],
        scan_input_directions=directions,
        scan_output_directions=out_directions,
        scan_output_axes=out_axes,
    )
    inits = [_w("W_scan", 4, 3), numpy_helper.from_array(np.array(0.9, dtype=np.float32), "decay")]
    inputs = [_f("state0", [2, 3]), _f("a", [2, 5, 4]), _f("b", [5, 2, 3])]
    return _model([node], inputs, [_f("state_final", [2, 3]), _f("gates", ["d0", "d1", "d2"])], inits)


@pytest.mark.parametrize(
    ("directions", "out_directions", "out_axes"),
    [([0, 0], [0], [0]), ([1, 0], [1], [2]), ([0, 1], [0], [-1])],
    ids=["forward", "reversed-in-and-out", "negative-out-axis"],
)
def test_scan_matches_onnxruntime(directions: list[int], out_directions: list[int], out_axes: list[int]) -> None:
    feeds = {
        "state0": RNG.standard_normal((2, 3)).astype(np.float32),
        "a": RNG.standard_normal((2, 5, 4)).astype(np.float32),
        "b": RNG.standard_normal((5, 2, 3)).astype(np.float32),
    }
    _assert_matches(_scan_model(directions, out_directions, out_axes), feeds)


@pytest.mark.parametrize(("time_axis", "batch_axis"), [(0, 1), (1, 0)])
def test_reverse_sequence_matches_onnxruntime(time_axis: int, batch_axis: int) -> None:
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"], time_axis=time_axis, batch_axis=batch_axis)
    shape = [5, 3, 2] if time_axis == 0 else [3, 5, 2]
    model = _model([node], [_f("x", shape), _i("lens", [3])], [_f("y", shape)])
    feeds = {"x": RNG.standard_normal(shape).astype(np.float32), "lens": np.array([5, 1, 3], dtype=np.int64)}
    _assert_matches(model, feeds)


def test_reverse_sequence_passes_gradients_to_every_element() -> None:
    x = torch.randn(4, 2, 3, requires_grad=True)
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"], time_axis=0, batch_axis=1)
    model = _model([node], [_f("x", [4, 2, 3]), _i("lens", [2])], [_f("y", [4, 2, 3])])
    out = OnnxGraphModule(model)({"x": x, "lens": torch.tensor([4, 2])})["y"]
    (out * torch.arange(out.numel()).reshape(out.shape)).sum().backward()
    assert x.grad is not None and bool((x.grad.reshape(-1).sort().values == torch.arange(24.0)).all())


def test_unsupported_operator_inside_a_branch_is_named() -> None:
    then_branch = helper.make_graph([helper.make_node("Det", ["x"], ["d"], name="deep_det")], "t", [], [_f("d")])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "e", [], [_f("e")])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch),
    ]
    model = _model(
        nodes, [_f("x", [2, 2])], [_f("y", [2, 2])], [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    )
    with pytest.raises(UnsupportedOperatorError, match=r"Det \(node 'deep_det'\)"):
        OnnxGraphModule(model)
