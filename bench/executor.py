"""Executor bench: the torch executor of ONNX graphs (what distill trains) against onnxruntime, per model.

For every dev model and every third-party model of `model_zoo.third_party`: the largest absolute and
relative (to the output's largest magnitude) difference over all outputs on a sample feed of the
package's real shapes (eval mode), the verdict (abs <= 1e-4 or rel <= 1e-5), how many trainable
tensors there are and how many got a non-zero gradient from one training-mode forward and backward
(a branch not taken gets none), and the times of one inference forward and one training step. A model
the executor refuses shows the capability check's reason instead.

    .venv/bin/python bench/executor.py [--models silero_vad_v5,nakdimon] [--batch 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import model_zoo
from compression.errors import CompressionError
from compression.model_info import iter_nodes
from compression.training.graph_module import OnnxGraphModule
from model_zoo.third_party_inputs import sample_feeds

ABS_TOLERANCE, REL_TOLERANCE = 1e-4, 1e-5
CONTROL_FLOW = ("If", "Loop", "Scan", "ReverseSequence", "LSTM", "GRU")


@dataclass
class Row:
    model: str
    control_flow: str
    max_abs: float | None = None
    max_rel: float | None = None
    trained: int = 0
    with_grad: int = 0
    forward_s: float = 0.0
    train_step_s: float = 0.0
    error: str = ""

    @property
    def verdict(self) -> str:
        if self.error:
            return "refused" if self.error.startswith("UnsupportedOperatorError") else "error"
        assert self.max_abs is not None and self.max_rel is not None
        return "pass" if self.max_abs <= ABS_TOLERANCE or self.max_rel <= REL_TOLERANCE else "FAIL"

    def line(self) -> str:
        if self.error:
            return f"| {self.model} | {self.control_flow} | | | {self.verdict} | | | | {self.error[:160]} |"
        return (
            f"| {self.model} | {self.control_flow} | {self.max_abs:.2e} | {self.max_rel:.2e} | {self.verdict} "
            f"| {self.with_grad}/{self.trained} | {self.forward_s:.2f} | {self.train_step_s:.2f} | |"
        )


def _control_flow(proto: onnx.ModelProto) -> str:
    counts: dict[str, int] = {}
    for node in iter_nodes(proto.graph):
        if node.op_type in CONTROL_FLOW:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ", ".join(f"{op}×{n}" for op, n in sorted(counts.items())) or "-"


def _torch_feeds(feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}


def bench(name: str, path: Path, feeds: dict[str, np.ndarray], threads: int) -> Row:
    proto = onnx.load(str(path))
    row = Row(name, _control_flow(proto))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(names, feeds), strict=True))
    try:
        module = OnnxGraphModule(proto).eval()
        start = time.perf_counter()
        with torch.no_grad():
            ours = module(_torch_feeds(feeds))
        row.forward_s = time.perf_counter() - start
    except CompressionError as exc:
        row.error = f"{type(exc).__name__}: {exc.message}"
        return row
    row.max_abs, row.max_rel = 0.0, 0.0
    for output in names:
        got, want = ours[output].numpy().astype(np.float64), reference[output].astype(np.float64)
        if got.shape != want.shape:
            row.error = f"shape of {output}: {got.shape} vs onnxruntime {want.shape}"
            return row
        if want.size:
            diff = float(np.abs(got - want).max())
            scale = float(np.abs(want).max())
            row.max_abs = max(row.max_abs, diff)
            row.max_rel = max(row.max_rel, diff / scale if scale else diff)
    module.train()
    start = time.perf_counter()
    out = module(_torch_feeds(feeds))
    loss = sum((v.float().square().mean() for v in out.values() if v.is_floating_point()), torch.zeros(()))
    if loss.requires_grad:
        loss.backward()
    row.train_step_s = time.perf_counter() - start
    row.trained = len(module.roles.parameters)
    row.with_grad = sum(1 for p in module.parameters() if p.grad is not None and bool(p.grad.any()))
    return row


def cases(models: list[str] | None, batch: int) -> list[tuple[str, Path, dict[str, np.ndarray]]]:
    found: list[tuple[str, Path, dict[str, np.ndarray]]] = []
    for name in model_zoo.MODEL_NAMES:
        if models is None or name in models:
            dev = model_zoo.load(name)
            found.append((name, dev.path, dev.feeds("test", batch)))
    for name in model_zoo.THIRD_PARTY_MODELS:
        if models is not None and name not in models:
            continue
        try:
            found.append((name, model_zoo.fetch(name), sample_feeds(name, batch=batch)))
        except (model_zoo.ThirdPartyUnavailable, KeyError) as exc:
            print(f"<!-- {name} skipped: {exc} -->")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated names (default: every dev and real model)")
    parser.add_argument("--batch", type=int, default=2, help="samples per feed for batched models")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m] or None
    print("| model | control flow / recurrent ops | max abs diff | max rel diff | verdict | params with grad "
          "| forward s | train step s | reason |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, path, feeds in cases(models, args.batch):
        row = bench(name, path, feeds, args.threads)
        rows.append(row)
        print(row.line(), flush=True)
    passed = sum(row.verdict == "pass" for row in rows)
    print(f"\n{passed}/{len(rows)} models match onnxruntime (abs <= {ABS_TOLERANCE:g} or rel <= {REL_TOLERANCE:g})")


if __name__ == "__main__":
    main()
