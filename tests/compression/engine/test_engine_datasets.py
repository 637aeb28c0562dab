"""Datasets bind to model inputs in both layouts and explain every mismatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compression.datasets import Dataset, DatasetBundle, check_compatible, describe_npz
from compression.errors import DatasetMismatchError
from compression.model_info import TensorSpec

IMAGE = TensorSpec(name="input", shape=["batch", 1, 8, 8], dtype="float32")
STATE = TensorSpec(name="h", shape=[2, 1, 128], dtype="float32")


def test_batched_layout_slices_the_batch_axis() -> None:
    data = Dataset.bind({"input": np.zeros((10, 1, 8, 8), np.float64), "labels": np.arange(10)}, [IMAGE])
    assert data.layout == "batched" and data.n_samples == 10
    assert data.arrays["input"].dtype == np.float32  # float64 upload cast to the input's type
    feeds = list(data.batches(4))
    assert [feed["input"].shape[0] for feed, _ in feeds] == [4, 4, 2]
    assert feeds[-1][1].tolist() == [8, 9]


def test_stacked_layout_gives_one_complete_input_per_entry() -> None:
    data = Dataset.bind({"h": np.ones((3, 2, 1, 128), np.float32)}, [STATE])
    assert data.layout == "stacked" and data.n_samples == 3
    feed, labels = next(data.batches(32))
    assert feed["h"].shape == (2, 1, 128) and labels is None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 1, 8, 8), np.float32)}, "missing arrays for model inputs ['input']"),
        ({"input": np.zeros((2, 8, 8), np.float32)}, "give rank 4 or 5"),
        ({"input": np.zeros((2, 3, 8, 8), np.float32)}, "dimension 1 should be 1, got 3"),
        ({"input": np.zeros((2, 1, 8, 8), np.int64)}, "needs float32"),
        ({"input": np.zeros((2, 1, 8, 8), np.float32), "labels": np.arange(3)}, "'labels' has 3 entries"),
    ],
)
def test_mismatches_are_explained(arrays: dict, message: str) -> None:
    with pytest.raises(DatasetMismatchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Dataset.bind(arrays, [IMAGE])


def test_mixed_layouts_are_refused() -> None:
    token = TensorSpec(name="t", shape=["batch", 4], dtype="int64")
    arrays = {"input": np.zeros((2, 1, 8, 8), np.float32), "t": np.zeros((2, 1, 4), np.int64)}
    with pytest.raises(DatasetMismatchError, match="mix layouts"):
        Dataset.bind(arrays, [IMAGE, token])


def test_npz_headers_only_and_metadata_checks(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input=np.zeros((7, 1, 8, 8), np.float32), labels=np.arange(7))
    arrays, n = describe_npz(path)
    assert n == 7 and arrays["input"] == {"shape": [7, 1, 8, 8], "dtype": "float32"}
    check_compatible(arrays, [IMAGE])
    with pytest.raises(DatasetMismatchError, match="match no model input"):
        check_compatible({**arrays, "extra": {"shape": [7], "dtype": "float32"}}, [IMAGE])
    np.savez(path, objects=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DatasetMismatchError, match="Python objects"):
        describe_npz(path)


def test_bundle_names_the_role_that_failed(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, input=np.zeros((2, 1, 8, 8), np.float32))
    np.savez(bad, image=np.zeros((2, 1, 8, 8), np.float32))
    bundle = DatasetBundle.load({"calibration": good, "eval": None}, [IMAGE])
    assert bundle.calibration is not None and bundle.eval is None
    with pytest.raises(DatasetMismatchError, match="^train dataset: "):
        DatasetBundle.load({"train": bad}, [IMAGE])


def test_synthetic_inputs_follow_declared_shapes() -> None:
    data = Dataset.synthetic_for([IMAGE], 16, seed=1)
    assert data.synthetic and data.layout == "batched" and data.arrays["input"].shape == (16, 1, 8, 8)
    fixed = Dataset.synthetic_for([STATE], 4)
    assert fixed.layout == "stacked" and fixed.arrays["h"].shape == (4, 2, 1, 128)
