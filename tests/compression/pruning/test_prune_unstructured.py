"""Magnitude and N:M pruning hit the requested sparsity exactly and keep the model valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from prune_helpers import initializers, run

from compression.pruning.unstructured import unstructured_prune
from model_zoo import DevModel

CONV_WEIGHTS = ["block1.a.0.weight", "block1.b.0.weight", "block2.a.0.weight", "block2.b.0.weight", "down.0.weight"]


def _prune(dev: DevModel, out: Path, **kwargs: object) -> dict:
    args: dict = {"method": "magnitude", "exclude": [], "skip_first_last": True, **kwargs}
    return unstructured_prune(dev.path, out, **args)


def test_global_magnitude_is_exact_over_the_pool(residual_cnn: DevModel, tmp_path: Path) -> None:
    out = tmp_path / "global.onnx"
    report = _prune(residual_cnn, out, sparsity=0.6, scope="global")
    weights = initializers(out)
    zeros = sum(int((weights[name] == 0).sum()) for name in CONV_WEIGHTS)
    total = sum(weights[name].size for name in CONV_WEIGHTS)
    assert zeros == round(0.6 * total)
    assert report["achieved_sparsity"] == zeros / total
    assert set(report["skipped_layers"]) == {"stem.0", "fc"}
    np.testing.assert_array_equal(weights["stem.0.weight"], initializers(residual_cnn.path)["stem.0.weight"])
    per_layer = [report["layers"][name.removesuffix(".weight")]["sparsity"] for name in CONV_WEIGHTS]
    assert len(set(per_layer)) > 1, "a global threshold spreads sparsity unevenly across layers"
    onnx.checker.check_model(str(out), full_check=True)
    assert run(out, residual_cnn.feeds(limit=16))[0].shape == (16, 10)


def test_layer_magnitude_is_exact_per_layer(mlp: DevModel, tmp_path: Path) -> None:
    out = tmp_path / "layer.onnx"
    report = _prune(mlp, out, sparsity=0.37, scope="layer", skip_first_last=False)
    weights = initializers(out)
    for name in ("fc1", "fc2", "fc3"):
        array = weights[f"{name}.weight"]
        assert int((array == 0).sum()) == round(0.37 * array.size)
        assert report["layers"][name]["sparsity"] == round(0.37 * array.size) / array.size
    original = initializers(mlp.path)["fc2.weight"]
    pruned = weights["fc2.weight"]
    assert np.abs(original[pruned == 0]).max() <= np.abs(original[pruned != 0]).min(), "smallest weights go first"


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4)])
def test_n_m_pattern_along_input_channels(
    residual_cnn: DevModel, mlp: DevModel, tmp_path: Path, n: int, m: int
) -> None:
    out = tmp_path / "conv.onnx"
    report = _prune(residual_cnn, out, method="n_m", n=n, m=m)
    weight = initializers(out)["block1.a.0.weight"]  # [out, in, kh, kw]: blocks of m input channels
    blocks = np.moveaxis(weight, 1, -1).reshape(-1, m)
    assert ((blocks != 0).sum(axis=1) == n).all()
    assert report["achieved_sparsity"] == 1 - n / m
    gemm_out = tmp_path / "gemm.onnx"
    _prune(mlp, gemm_out, method="n_m", n=n, m=m, skip_first_last=False)
    fc1 = initializers(gemm_out)["fc1.weight"]  # Gemm transB=1: [out, in], input channels on axis 1
    assert ((fc1.reshape(fc1.shape[0], -1, m) != 0).sum(axis=2) == n).all()
    assert run(gemm_out, mlp.feeds(limit=8))[0].shape == (8, 10)


def test_n_m_skips_layers_not_divisible_by_m(digits_cnn: DevModel, tmp_path: Path) -> None:
    report = _prune(digits_cnn, tmp_path / "nm.onnx", method="n_m", n=2, m=3, skip_first_last=False)
    assert "not a multiple of m=3" in report["skipped_layers"]["conv1"]  # one input channel
    assert "conv2" in report["skipped_layers"] and "fc1" in report["skipped_layers"]
