"""Rank-0 inputs (a sample rate): every feed is a 0-d np.ndarray, in both layouts and for synthetic data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compression.datasets import Dataset, check_compatible, count_samples_of
from compression.errors import DatasetMismatchError
from compression.metrics.evaluation import Evaluator
from compression.metrics.inference import make_session, run_dataset
from compression.model_info import TensorSpec, inspect_model
from compression.quantization.calibration import DatasetReader
from compression.settings import EngineSettings
from compression.synthetic import synthetic_dataset

AUDIO = TensorSpec(name="audio", shape=["batch", 16], dtype="float32")
STATE = TensorSpec(name="state", shape=[2, "batch", 8], dtype="float32")
RATE = TensorSpec(name="sr", shape=[], dtype="int64")


def _feeds_are_arrays_of_declared_rank(data: Dataset, specs: list[TensorSpec]) -> None:
    ranks = {spec.name: len(spec.shape) for spec in specs}
    for feed, _ in data.batches(4):
        for name, value in feed.items():
            assert type(value) is np.ndarray, f"{name} fed as {type(value).__name__}"
            assert value.ndim == ranks[name]


def test_stacked_scalar_gives_0d_arrays() -> None:
    data = Dataset.bind({"state": np.zeros((3, 2, 1, 8)), "sr": np.full((3,), 16000)}, [STATE, RATE])
    assert data.layout == "stacked" and data.n_samples == 3 and data.scalars == {"sr"}
    feed = data.first_feed(8)
    assert type(feed["sr"]) is np.ndarray and feed["sr"].shape == () and int(feed["sr"]) == 16000
    assert feed["sr"].dtype == np.int64
    _feeds_are_arrays_of_declared_rank(data, [STATE, RATE])


def test_shared_0d_scalar_joins_a_batched_dataset() -> None:
    audio = np.zeros((10, 16), np.float32)
    data = Dataset.bind({"audio": audio, "sr": np.array(8000), "labels": np.arange(10)}, [AUDIO, RATE])
    assert data.layout == "batched" and data.n_samples == 10
    feeds = list(data.batches(4))
    assert [feed["audio"].shape[0] for feed, _ in feeds] == [4, 4, 2]
    assert all(type(feed["sr"]) is np.ndarray and feed["sr"].shape == () for feed, _ in feeds)
    assert data.take(3).first_feed(8)["sr"].shape == ()


def test_shared_0d_scalar_in_a_stacked_dataset_and_alone() -> None:
    data = Dataset.bind({"state": np.zeros((5, 2, 1, 8)), "sr": np.array(16000)}, [STATE, RATE])
    assert data.layout == "stacked" and data.n_samples == 5
    assert all(feed["sr"].shape == () for feed, _ in data.batches(2))
    alone = Dataset.bind({"sr": np.array(16000)}, [RATE])
    assert alone.n_samples == 1 and alone.first_feed(1)["sr"].shape == ()


def test_per_sample_scalars_with_batched_tensors_explain_the_fix() -> None:
    with pytest.raises(DatasetMismatchError, match="0-d value shared by every sample"):
        Dataset.bind({"audio": np.zeros((4, 16), np.float32), "sr": np.full((4,), 16000)}, [AUDIO, RATE])


def test_headers_and_compatibility_accept_a_0d_scalar() -> None:
    assert count_samples_of({"audio": 7, "sr": None}) == 7
    assert count_samples_of({"sr": None}) == 1
    check_compatible(
        {"audio": {"shape": [7, 16], "dtype": "float32"}, "sr": {"shape": [], "dtype": "int64"}}, [AUDIO, RATE]
    )
    with pytest.raises(DatasetMismatchError, match="needs int64"):
        check_compatible(
            {"audio": {"shape": [7, 16], "dtype": "float32"}, "sr": {"shape": [], "dtype": "<U3"}}, [AUDIO, RATE]
        )


@pytest.mark.parametrize("inputs", [[STATE, RATE], [AUDIO, RATE], [RATE]])
def test_synthetic_scalar_is_a_shared_0d_value(inputs: list[TensorSpec]) -> None:
    data = Dataset.synthetic_for(inputs, 6, seed=3)
    assert data.n_samples == 6 and data.scalars == {"sr"}
    assert data.layout == ("batched" if AUDIO in inputs else "stacked")
    values = {int(feed["sr"]) for feed, _ in data.batches(2)}
    assert len(values) == 1  # a setting, not data: one value for the whole dataset
    for feed, _ in data.batches(2):
        assert type(feed["sr"]) is np.ndarray and feed["sr"].shape == ()


def _scalar_model(path):
    """y = audio * sr (a rank-0 int64 input cast to float)."""
    nodes = [
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["audio", "srf"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scalar",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("layout", ["batched", "stacked", "synthetic"])
def test_every_feed_builder_runs_onnxruntime_on_a_scalar_input(tmp_path, layout: str) -> None:
    """Evaluation, latency feed and calibration reader all hand onnxruntime arrays it accepts."""
    path = _scalar_model(tmp_path / "scalar.onnx")
    specs = inspect_model(path).inputs
    if layout == "batched":
        data = Dataset.bind({"audio": np.ones((12, 16), np.float32), "sr": np.array(2)}, specs)
    elif layout == "stacked":
        data = Dataset.bind({"audio": np.ones((12, 3, 16), np.float32), "sr": np.full((12,), 2)}, specs)
    else:
        data = Dataset.synthetic_for(specs, 12)
    outputs = run_dataset(make_session(path), data, 5)
    assert outputs["y"].shape == ((12, 3, 16) if layout == "stacked" else (12, 16))
    evaluator = Evaluator(path, data, EngineSettings(latency_runs=3))
    assert evaluator.fidelity(path).outputs["y"].cosine > 0.999
    make_session(path).run(None, evaluator.latency_feed())
    reader = DatasetReader(data, 8)
    session = make_session(path)
    while (feed := reader.get_next()) is not None:
        session.run(None, feed)


def _reflect_pad_model(path):
    """A reflect Pad over a symbolic axis (as silero's STFT): it refuses an axis of length 1."""
    nodes = [
        helper.make_node("Pad", ["audio", "pads"], ["padded"], mode="reflect"),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["padded", "srf"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "reflect",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
        [helper.make_tensor("pads", TensorProto.INT64, [4], [0, 8, 0, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_synthetic_data_is_sized_so_the_model_runs(tmp_path) -> None:
    path = _reflect_pad_model(tmp_path / "reflect.onnx")
    with pytest.raises(Exception, match="reflect"):
        make_session(path).run(None, Dataset.synthetic_for(inspect_model(path).inputs, 4).first_feed(1))
    data = synthetic_dataset(path, 4)
    assert data.layout == "batched" and data.arrays["audio"].shape == (4, 16)
    make_session(path).run(None, data.first_feed(2))


@pytest.mark.parametrize("name", ["silero_vad_op15", "silero_vad_v5"])
@pytest.mark.parametrize("with_data", [True, False])
def test_silero_with_its_sample_rate_input_quantizes(third_party_model, tmp_path, name: str, with_data: bool) -> None:
    """Silero VAD v5 takes `sr` as a rank-0 int64 and keeps its LSTM inside If branches."""
    from compression.datasets import DatasetBundle
    from compression.pipeline import run_pipeline
    from compression.spec import CompressionSpec
    from model_zoo import third_party_inputs

    src = third_party_model(name)
    inputs = inspect_model(src).inputs
    datasets = DatasetBundle()
    if with_data:
        datasets = DatasetBundle(eval=Dataset.bind(third_party_inputs.eval_set(name), inputs))
    step = {"type": "quantize", "mode": "dynamic", "speed_guard": False}
    result = run_pipeline(src, CompressionSpec(steps=[step]), datasets, tmp_path, None, EngineSettings(latency_runs=3))
    details = result.metrics.steps[0].details
    if not with_data and details["input_model_returned"]:  # noise inputs: the budget may refuse, the job runs
        assert "outside the budget" in details["reason"], details["reason"]
        return
    assert not details["input_model_returned"], details.get("reason")
    feed = next(iter(Dataset.bind(third_party_inputs.eval_set(name, 1), inputs).batches(1)))[0]
    assert type(feed["sr"]) is np.ndarray and feed["sr"].shape == ()
    make_session(result.model_path).run(None, feed)
