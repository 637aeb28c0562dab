"""Least-squares reconstruction after structured pruning: closer outputs, If-body weights untouched, flag off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from prune_helpers import initializers, prune, run

from compression.contract import PassContext
from compression.datasets import Dataset, DatasetBundle
from compression.model_info import inspect_model
from compression.passes.registry import create_pass
from compression.pruning.reconstruction import ReconstructionLimits
from compression.spec import CompressionSpec
from model_zoo import DevModel


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = candidate.reshape(len(candidate), -1).astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _dataset(path: Path, arrays: dict[str, np.ndarray]) -> Dataset:
    return Dataset.bind(arrays, inspect_model(path).inputs)


def _compare(dev: DevModel, tmp_path: Path, sparsity: float) -> tuple[float, float, dict]:
    """Mean per-sample output cosine to the original on test data: plain prune, prune + reconstruction."""
    calibration = _dataset(dev.path, dict(dev.feeds("train", 64)))
    plain, rebuilt = tmp_path / "plain.onnx", tmp_path / "rebuilt.onnx"
    prune(dev.path, plain, sparsity, dataset=calibration)
    report = prune(dev.path, rebuilt, sparsity, dataset=calibration, reconstruction=ReconstructionLimits())
    feeds = dev.feeds("test", 128)
    reference = run(dev.path, feeds)[0]
    return (
        float(_cosines(reference, run(plain, feeds)[0]).mean()),
        float(_cosines(reference, run(rebuilt, feeds)[0]).mean()),
        report["reconstruction"],
    )


def test_reconstruction_brings_a_conv_net_back(digits_cnn: DevModel, tmp_path: Path) -> None:
    plain, rebuilt, report = _compare(digits_cnn, tmp_path, 0.5)
    assert report["layers_reconstructed"] >= 1
    assert any(entry["op"] == "Conv" and entry["status"] == "reconstructed" for entry in report["layers"])
    assert rebuilt > 0.9 and rebuilt - plain > 0.15, (plain, rebuilt)


def test_reconstruction_brings_an_mlp_back(mlp: DevModel, tmp_path: Path) -> None:
    plain, rebuilt, report = _compare(mlp, tmp_path, 0.5)
    assert report["layers_reconstructed"] == 2
    assert report["output_cosine_after"]["mean"] > report["output_cosine_before"]["mean"]
    assert rebuilt > 0.98 and rebuilt - plain > 0.05, (plain, rebuilt)
    for entry in report["layers"]:
        assert entry["error_after"] < entry["error_before"]


def _mlp_with_if_reader(path: Path) -> None:
    """x -> Gemm(W1) -> Relu -> Gemm(W2) -> y; an If branch also returns -W2 (an outer-scope read of W2)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (8, 16)).astype(np.float32)
    w1[:, ::2] *= 0.2  # half the hidden units matter less: l2 importance removes those
    w2 = rng.normal(0, 0.5, (16, 4)).astype(np.float32)
    then_out = helper.make_tensor_value_info("w_then", TensorProto.FLOAT, [16, 4])
    else_out = helper.make_tensor_value_info("w_else", TensorProto.FLOAT, [16, 4])
    then_body = helper.make_graph([helper.make_node("Neg", ["W2"], ["w_then"])], "then", [], [then_out])
    else_body = helper.make_graph([helper.make_node("Abs", ["W2"], ["w_else"])], "else", [], [else_out])
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "B1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "W2", "B2"], ["y"], name="fc2"),
        helper.make_node("If", ["flag"], ["w_out"], name="if", then_branch=then_body, else_branch=else_body),
    ]
    inits = [
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(np.full(16, 0.1, np.float32), "B1"),
        numpy_helper.from_array(w2, "W2"),
        numpy_helper.from_array(np.zeros(4, np.float32), "B2"),
        numpy_helper.from_array(np.array(True), "flag"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [16, 4]),
        ],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_weight_read_inside_an_if_body_keeps_its_values(tmp_path: Path) -> None:
    source, out = tmp_path / "mlp_if.onnx", tmp_path / "pruned.onnx"
    _mlp_with_if_reader(source)
    x = np.random.default_rng(1).normal(0, 1, (96, 8)).astype(np.float32)
    report = prune(source, out, 0.5, importance="l2", dataset=_dataset(source, {"x": x}),
                   reconstruction=ReconstructionLimits())  # fmt: skip
    onnx.checker.check_model(onnx.load(str(out)))
    original_w2 = initializers(source)["W2"]
    y, w_out = run(out, {"x": x[:16]})
    assert w_out.shape == (16, 4)
    np.testing.assert_array_equal(w_out, -original_w2)  # the body still reads the untouched weight
    entries = {entry["name"]: entry for entry in report["reconstruction"]["layers"]}
    assert "fc2" in entries or "fc2" in report["reconstruction"]["skipped"]
    if entries.get("fc2", {}).get("status") == "reconstructed":  # then through a private copy, not W2
        fc2 = next(n for n in onnx.load(str(out)).graph.node if n.name == "fc2")
        assert fc2.input[1] != "W2"


def test_reconstruct_off_gives_the_plain_prune(mlp: DevModel, tmp_path: Path) -> None:
    calibration = _dataset(mlp.path, dict(mlp.feeds("train", 64)))
    bundle = DatasetBundle(calibration=calibration)
    step = CompressionSpec.model_validate(
        {
            "steps": [
                {
                    "type": "prune",
                    "method": "structured",
                    "sparsity": 0.5,
                    "reconstruct": False,
                    "allocation": "uniform",
                    "speed_check": False,
                    "recalibrate_batchnorm": False,
                }
            ]
        }  # fmt: skip
    ).steps[0]
    ctx = PassContext(work_dir=tmp_path / "off", original_model=mlp.path, datasets=bundle)
    result = create_pass(step).run(mlp.path, ctx)
    assert result.metrics["reconstruction"] == "off"
    plain = tmp_path / "plain.onnx"
    prune(mlp.path, plain, 0.5, importance="l2", dataset=calibration)
    pruned, expected = initializers(result.model_path), initializers(plain)
    assert pruned.keys() == expected.keys()
    for name, array in expected.items():
        np.testing.assert_array_equal(pruned[name], array)
    on = step.model_copy(update={"reconstruct": True})
    ctx_on = PassContext(work_dir=tmp_path / "on", original_model=mlp.path, datasets=bundle)
    metrics = create_pass(on).run(mlp.path, ctx_on).metrics["reconstruction"]
    assert metrics["layers_reconstructed"] > 0 and metrics["seconds"] >= 0


def test_a_weight_two_layers_share_is_left_alone(tmp_path: Path) -> None:
    """fc2 and fc3 read the same W2 with the same cut: refitting it for one would change the other."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (8, 16)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "W1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "W2"], ["y"], name="fc2"),
        helper.make_node("Gemm", ["r", "W2"], ["z"], name="fc3"),
    ]
    inits = [
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (16, 4)).astype(np.float32), "W2"),
    ]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", 4]) for name in ("y", "z")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])]
    source, out = tmp_path / "shared.onnx", tmp_path / "pruned.onnx"
    graph = helper.make_graph(nodes, "shared", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(source))
    x = rng.normal(0, 1, (64, 8)).astype(np.float32)
    report = prune(source, out, 0.5, importance="l2", dataset=_dataset(source, {"x": x}),
                   reconstruction=ReconstructionLimits())  # fmt: skip
    skipped = report["reconstruction"]["skipped"]
    assert set(skipped) == {"fc2", "fc3"} and all("read by 2 nodes" in reason for reason in skipped.values())
    plain = tmp_path / "plain.onnx"
    prune(source, plain, 0.5, importance="l2", dataset=_dataset(source, {"x": x}))
    np.testing.assert_array_equal(initializers(out)["W2"], initializers(plain)["W2"])
