"""Sensitivity allocation: groups whose loss moves the outputs little give up more channels, at the same total."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from prune_helpers import prune, run

from compression.contract import PassContext, StepConfig
from compression.datasets import Dataset, DatasetBundle
from compression.model_info import inspect_model
from compression.passes.registry import create_pass
from compression.pruning import allocation
from compression.pruning.allocation import AllocationLimits
from compression.pruning.dependency import analyze
from compression.pruning.model_io import load_for_pruning
from compression.settings import EngineSettings
from compression.spec import CompressionSpec

LIMITS = AllocationLimits(seconds=60.0, samples=16, max_group_sparsity=0.8)


def _two_branches(path: Path, b_scale: float = 0.01) -> Path:
    """y = fc_a_out(relu(fc_a(x))) + fc_b_out(relu(fc_b(x))); branch b's output weights are 100x smaller, so its
    hidden units barely move y. Both hidden layers are 16 wide with the same weights per channel."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    for branch, scale in (("a", 1.0), ("b", b_scale)):
        inits += [
            numpy_helper.from_array(rng.normal(0, 0.5, (8, 16)).astype(np.float32), f"w_{branch}"),
            numpy_helper.from_array(np.full(16, 0.1, np.float32), f"b_{branch}"),
            numpy_helper.from_array((rng.normal(0, 0.5, (16, 4)) * scale).astype(np.float32), f"w_{branch}_out"),
        ]
        nodes += [
            helper.make_node("Gemm", ["x", f"w_{branch}", f"b_{branch}"], [f"h_{branch}"], name=f"fc_{branch}"),
            helper.make_node("Relu", [f"h_{branch}"], [f"r_{branch}"], name=f"relu_{branch}"),
            helper.make_node("MatMul", [f"r_{branch}", f"w_{branch}_out"], [f"y_{branch}"], name=f"fc_{branch}_out"),
        ]
    nodes.append(helper.make_node("Add", ["y_a", "y_b"], ["y"], name="sum"))
    graph = helper.make_graph(
        nodes,
        "two_branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _data(path: Path, n: int = 64, seed: int = 1) -> tuple[Dataset, np.ndarray]:
    x = np.random.default_rng(seed).normal(0, 1, (n, 8)).astype(np.float32)
    return Dataset.bind({"x": x}, inspect_model(path).inputs), x


def _relative_error(source: Path, pruned: Path, x: np.ndarray) -> float:
    reference, candidate = run(source, {"x": x})[0], run(pruned, {"x": x})[0]
    return float(np.square(candidate - reference).sum() / np.square(reference).sum())


def _kept(report: dict, producer: str) -> int:
    return next(g["kept"] for g in report["groups"] if producer in g["producers"])


def test_the_insensitive_group_gives_up_more_channels(tmp_path: Path) -> None:
    source = _two_branches(tmp_path / "two.onnx")
    calibration, _ = _data(source)
    uniform, allocated = tmp_path / "uniform.onnx", tmp_path / "allocated.onnx"
    uniform_report = prune(source, uniform, 0.5, dataset=calibration)
    report = prune(source, allocated, 0.5, dataset=calibration, allocation=LIMITS)
    assert uniform_report["allocation"] == {"method": "uniform"}
    allocation = report["allocation"]
    assert allocation["method"] == "sensitivity" and allocation["groups_measured"] == 2
    assert _kept(uniform_report, "fc_a") == _kept(uniform_report, "fc_b") == 8
    assert _kept(report, "fc_b") < 8 < _kept(report, "fc_a")  # the cut moved to the branch that matters less
    # at least as many weights removed as uniform pruning, and the measured damage is lower
    assert allocation["weights_removed"] >= allocation["weights_removed_uniform"] > 0
    assert allocation["damage"] < allocation["damage_uniform"]
    removed = {g["producers"][0]: 16 - g["kept"] for g in report["groups"]}
    assert sum(removed.values()) >= 16
    _, unseen = _data(source, 32, seed=7)  # judged on inputs the allocation never saw
    assert _relative_error(source, allocated, unseen) < 0.5 * _relative_error(source, uniform, unseen)
    for entry in allocation["groups"]:
        assert set(entry["damage"]) == {"0", "0.25", "0.5", "0.8"} and entry["damage"]["0"] == 0.0


def test_without_data_or_time_every_group_keeps_the_requested_sparsity(tmp_path: Path) -> None:
    source = _two_branches(tmp_path / "two.onnx")
    report = prune(source, tmp_path / "no_data.onnx", 0.5, allocation=LIMITS)
    assert report["allocation"]["method"] == "uniform" and "dataset" in report["allocation"]["reason"]
    calibration, _ = _data(source)
    hurried = AllocationLimits(seconds=1e-9, samples=16, max_group_sparsity=0.8)
    report = prune(source, tmp_path / "no_time.onnx", 0.5, dataset=calibration, allocation=hurried)
    allocation = report["allocation"]
    assert allocation["method"] == "uniform" and "one trial for 0 of 2 groups" in allocation["reason"]
    assert allocation["groups_measured"] == 0 and allocation["groups_fixed"] == 2
    assert _kept(report, "fc_a") == _kept(report, "fc_b") == 8


def test_a_consumer_weight_read_inside_an_if_body_is_not_tried(tmp_path: Path) -> None:
    """A probe feed for a weight an If branch also reads would change the branch's output too, which removing
    channels does not: that group keeps the requested sparsity, and the other one is still measured."""
    source = _two_branches(tmp_path / "two.onnx")
    model = onnx.load(str(source))
    out = helper.make_tensor_value_info("w_seen", TensorProto.FLOAT, [16, 4])
    body = helper.make_graph([helper.make_node("Mul", ["w_a_out", "total"], ["w_seen"])], "then", [], [out])
    model.graph.node.extend([  # a condition computed from the input, so nothing folds the If away
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["flag"]),
        helper.make_node("If", ["flag"], ["w_if"], then_branch=body, else_branch=body),
    ])  # fmt: skip
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    model.graph.output.append(helper.make_tensor_value_info("w_if", TensorProto.FLOAT, [16, 4]))
    onnx.save(model, str(source))
    calibration, _ = _data(source)
    report = prune(source, tmp_path / "pruned.onnx", 0.5, dataset=calibration, allocation=LIMITS)
    groups = {g["producers"][0]: g for g in report["allocation"]["groups"]}
    assert "also read elsewhere" in groups["fc_a"]["note"] and groups["fc_a"]["sparsity"] == 0.5
    assert groups["fc_b"]["damage"] and report["allocation"]["groups_measured"] == 1
    onnx.checker.check_model(onnx.load(str(tmp_path / "pruned.onnx")))


def _step(step: dict) -> StepConfig:
    return CompressionSpec.model_validate({"steps": [step]}).steps[0]


def test_the_prune_step_allocates_by_default(tmp_path: Path) -> None:
    source = _two_branches(tmp_path / "two.onnx")
    calibration, _ = _data(source)
    bundle = DatasetBundle(calibration=calibration, eval=calibration)
    ctx = PassContext(work_dir=tmp_path / "work", original_model=source, datasets=bundle, settings=EngineSettings())
    step = {"type": "prune", "method": "structured", "sparsity": 0.5, "speed_check": False}
    result = create_pass(_step(step)).run(source, ctx)
    assert result.metrics["allocation"]["method"] == "sensitivity"
    assert _kept(result.metrics, "fc_b") < _kept(result.metrics, "fc_a")
    uniform = create_pass(_step({**step, "allocation": "uniform"})).run(source, ctx)
    assert uniform.metrics["allocation"] == {"method": "uniform"}


def test_levels_there_was_no_time_for_are_extrapolated(tmp_path: Path, monkeypatch) -> None:
    """Every group is measured at the requested level first; when the time is spent before the other levels,
    their damage is extrapolated from it (and said so), not left out."""
    source = _two_branches(tmp_path / "two.onnx")
    model = load_for_pruning(source)
    analysis = analyze(model, set())
    groups = [g for g in analysis.roots() if g.prunable]
    clock = [0.0]

    class Probe:  # each trial costs one fake second
        def damage(self, weights: dict[str, np.ndarray]) -> float:
            clock[0] += 1.0
            return float(sum((w == 0).sum() for w in weights.values()))

    monkeypatch.setattr(allocation.time, "monotonic", lambda: clock[0])
    tryable = [(g, [s for s in g.slots if s.role == "weight_in"]) for g in groups]
    scores = {g.id: np.arange(g.size, dtype=np.float64) for g in groups}
    base = {s.node.inputs[s.input_index].name: s.node.inputs[s.input_index].const_value.numpy() for _, slots in tryable
            for s in slots}  # fmt: skip

    def keep(size: int, level: float) -> int:
        return size - round(size * level)

    trials = allocation._measure(Probe(), tryable, scores, 0.5, keep, base, LIMITS, 1.5, lambda: None)  # type: ignore[arg-type]
    assert len(trials) == 2 and clock[0] == 2.0  # both groups at 0.5, then the deadline
    for trial in trials:
        target = trial.levels.index(0.5)
        assert trial.damage[target] == 8 * 4  # 8 channels x 4 output weights zeroed
        assert trial.estimated == {i for i, level in enumerate(trial.levels) if level not in (0.0, 0.5)}
        quarter = trial.levels.index(0.25)
        assert trial.damage[quarter] == pytest.approx(trial.damage[target] * 0.5**allocation.EXPONENT)


def test_a_failing_trial_falls_back_to_uniform(tmp_path: Path, monkeypatch) -> None:
    def fail(self, weights):  # noqa: ANN001
        raise RuntimeError("onnxruntime cannot run this trial")

    monkeypatch.setattr(allocation._Probe, "damage", fail)
    source = _two_branches(tmp_path / "two.onnx")
    calibration, _ = _data(source)
    report = prune(source, tmp_path / "pruned.onnx", 0.5, dataset=calibration, allocation=LIMITS)
    assert report["allocation"]["method"] == "uniform" and "cannot run this trial" in report["allocation"]["reason"]
    assert _kept(report, "fc_a") == _kept(report, "fc_b") == 8


def test_a_group_the_data_never_reaches_keeps_the_requested_sparsity(tmp_path: Path) -> None:
    """Branch b's output weights are zero, as for channels behind an If branch the calibration data never takes:
    no cut moves the outputs, which says nothing about how much it matters, so it is not cut deeper."""
    source = _two_branches(tmp_path / "two.onnx", b_scale=0.0)
    calibration, _ = _data(source)
    report = prune(source, tmp_path / "pruned.onnx", 0.5, dataset=calibration, allocation=LIMITS)
    groups = {g["producers"][0]: g for g in report["allocation"]["groups"]}
    assert "never reaches" in groups["fc_b"]["note"] and groups["fc_b"]["sparsity"] == 0.5
    assert _kept(report, "fc_b") == 8 and report["allocation"]["groups_measured"] == 1


def _branches(path: Path) -> Path:
    """y = If(flag) {Conv a -> Relu -> Conv b} else {the same with other weights}: every weight a body initializer."""
    rng = np.random.default_rng(11)

    def branch(name: str) -> onnx.GraphProto:
        inits = [
            numpy_helper.from_array(rng.normal(0, 0.4, (8, 2, 3, 3)).astype(np.float32), f"{name}_a.w"),
            numpy_helper.from_array(np.full(8, 0.1, np.float32), f"{name}_a.b"),
            numpy_helper.from_array(rng.normal(0, 0.4, (4, 8, 3, 3)).astype(np.float32), f"{name}_b.w"),
        ]
        nodes = [
            helper.make_node("Conv", ["x", f"{name}_a.w", f"{name}_a.b"], [f"{name}_a"], name=f"{name}_a", pads=[1] * 4),
            helper.make_node("Relu", [f"{name}_a"], [f"{name}_r"]),
            helper.make_node("Conv", [f"{name}_r", f"{name}_b.w"], [f"{name}_out"], name=f"{name}_b", pads=[1] * 4),
        ]  # fmt: skip
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)],
                                 inits)  # fmt: skip

    if_node = helper.make_node("If", ["flag"], ["y"], name="if", then_branch=branch("then"), else_branch=branch("else"))
    graph = helper.make_graph(
        [if_node],
        "branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 5, 5]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 5, 5])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_weights_inside_a_taken_branch_are_measured_and_the_other_branch_keeps_its_sparsity(tmp_path: Path) -> None:
    """Body initializers move to the probe's main graph (the body reads them from the outer scope), so the groups
    of the branch the data takes are measured; the other branch's are never reached and keep the request."""
    source = _branches(tmp_path / "branches.onnx")
    x = np.random.default_rng(12).normal(size=(16, 2, 5, 5)).astype(np.float32)
    calibration = Dataset.bind({"x": x, "flag": np.array(True)}, inspect_model(source).inputs)
    out = tmp_path / "pruned.onnx"
    report = prune(source, out, 0.5, importance="l2", dataset=calibration, allocation=LIMITS)
    groups = {g["producers"][0]: g for g in report["allocation"]["groups"]}
    assert report["allocation"]["method"] == "sensitivity"
    assert groups["then_a"]["damage"]["0.5"] > 0 and groups["then_a"].get("note") is None
    assert "never reaches" in groups["else_a"]["note"] and groups["else_a"]["sparsity"] == 0.5
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    for flag in (True, False):  # both branches still run
        y = run(out, {"x": x[:4], "flag": np.array(flag)})[0]
        assert y.shape == (4, 4, 5, 5) and np.isfinite(y).all()


def test_a_deeper_cut_that_reads_less_damage_is_not_taken(tmp_path: Path) -> None:
    """A deeper level removes the shallower one's channels and more; when a few samples read it as less damaging,
    the choice goes by the monotone envelope and does not remove more than asked (lac: 57% for 0.3)."""
    source = _two_branches(tmp_path / "two.onnx")
    analysis = analyze(load_for_pruning(source), set())
    a, b = sorted((g for g in analysis.roots() if g.prunable), key=lambda g: g.producers)
    levels, kept = [0.0, 0.25, 0.5, 0.8], [16, 12, 8, 3]
    noisy = allocation._Trial(a, levels, [0.0, 0.10, 0.30, 0.20], kept)  # 0.8 reads lower than 0.5
    assert noisy.cost == [0.0, 0.10, 0.30, 0.30]
    counter = allocation._WeightCount([a, b])
    uniform_cut = {a.id: 8, b.id: 8}
    picks = allocation._choose([noisy], [2], counter, uniform_cut)  # b not measured: keeps the uniform cut
    assert allocation._meet_exact_target([noisy], picks, counter, uniform_cut) == [2]  # not 0.8 for free
    # a pair move that lowers the damage with enough weights removed is still made: sparing a saves 0.2, and
    # cutting b deeper costs 0.05 (b's first cut is what hurts)
    steep = allocation._Trial(b, levels, [0.0, 0.25, 0.30, 0.35], kept)
    assert allocation._choose([noisy, steep], [2, 2], counter, uniform_cut) == [1, 3]


def _unequal_branches(path: Path) -> Path:
    """Two independent branches x -> Gemm(8x16) -> Relu -> MatMul: branch a's output is 4 wide, b's 64, so one
    of b's hidden channels spans 73 weights and one of a's 13."""
    rng = np.random.default_rng(0)
    inits, nodes, outputs = [], [], []
    for branch, width in (("a", 4), ("b", 64)):
        inits += [
            numpy_helper.from_array(rng.normal(0, 0.5, (8, 16)).astype(np.float32), f"w_{branch}"),
            numpy_helper.from_array(np.full(16, 0.1, np.float32), f"b_{branch}"),
            numpy_helper.from_array(rng.normal(0, 0.5, (16, width)).astype(np.float32), f"w_{branch}_out"),
        ]
        nodes += [
            helper.make_node("Gemm", ["x", f"w_{branch}", f"b_{branch}"], [f"h_{branch}"], name=f"fc_{branch}"),
            helper.make_node("Relu", [f"h_{branch}"], [f"r_{branch}"]),
            helper.make_node("MatMul", [f"r_{branch}", f"w_{branch}_out"], [f"y_{branch}"], name=f"out_{branch}"),
        ]
        outputs.append(helper.make_tensor_value_info(f"y_{branch}", TensorProto.FLOAT, ["n", width]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])]
    graph = helper.make_graph(nodes, "unequal", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_choice_removes_at_most_a_quarter_more_weights_than_asked(tmp_path: Path, monkeypatch) -> None:
    """Sparing a small group by cutting a wide one deeper lowers the damage but removes far more weights than the
    requested sparsity (lac: 57% for 0.3); moves stay within MAX_OVERSHOOT above uniform pruning's weights."""
    analysis = analyze(load_for_pruning(_unequal_branches(tmp_path / "unequal.onnx")), set())
    a, b = sorted((g for g in analysis.roots() if g.prunable), key=lambda g: g.producers)
    levels, kept = [0.0, 0.25, 0.5, 0.8], [16, 12, 8, 3]
    trials = [
        allocation._Trial(a, levels, [0.0, 0.10, 0.30, 0.60], kept),  # the narrow branch: every cut hurts
        allocation._Trial(b, levels, [0.0, 0.10, 0.30, 0.31], kept),  # the wide one: 0.8 costs little more
    ]
    counter = allocation._WeightCount([a, b])
    uniform_cut = {a.id: 8, b.id: 8}
    target = counter.removed(uniform_cut)
    picks = allocation._choose(trials, [2, 2], counter, uniform_cut)
    assert counter.removed(allocation._cut(trials, picks, uniform_cut)) <= (1 + allocation.MAX_OVERSHOOT) * target
    assert picks == [2, 2]
    monkeypatch.setattr(allocation, "MAX_OVERSHOOT", 10.0)  # without the bound, the trade is made
    assert allocation._choose(trials, [2, 2], counter, uniform_cut) == [0, 3]
