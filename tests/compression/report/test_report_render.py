"""The HTML job report from real pipeline metrics: sections, inline SVG charts, escaping, partial metrics."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import typer
from report_helpers import PRUNE, QUANTIZE, assert_self_contained, parse, run_job
from typer.testing import CliRunner

from compression.cli import compress
from compression.report import ReportContext, job_context, render_report, write_report

ONE_MB = 1 << 20


@pytest.fixture(scope="module")
def fast_job(digits_cnn, tmp_path_factory) -> tuple[dict[str, Any], ReportContext]:
    """prune -> quantize (dynamic, with a budget so the sensitivity table is recorded): no training."""
    metrics, spec, bundle = run_job(digits_cnn, [PRUNE, QUANTIZE], tmp_path_factory.mktemp("fast_job"))
    return metrics, job_context("digits_cnn.onnx", spec, bundle)


@pytest.fixture(scope="module")
def distill_job(digits_cnn, tmp_path_factory) -> tuple[dict[str, Any], ReportContext]:
    """prune -> distill (1 epoch) -> quantize (dynamic)."""
    steps = [PRUNE, {"type": "distill", "epochs": 1}, QUANTIZE]
    metrics, spec, bundle = run_job(digits_cnn, steps, tmp_path_factory.mktemp("distill_job"))
    return metrics, job_context("digits_cnn.onnx", spec, bundle)


@pytest.mark.slow
def test_report_of_prune_distill_quantize_has_every_section_and_chart(distill_job, tmp_path: Path) -> None:
    metrics, context = distill_job
    page = render_report(metrics, context)
    parser = parse(page)
    assert_self_contained(page, parser)
    assert {"summary", "steps", "outputs", "latency", "provenance"} <= parser.ids()
    labels = parser.svg_labels()
    for chart in (
        "input vs output",
        "accuracy and agreement after each step",
        "channels per layer before (grey) and kept (blue)",
        "distillation loss per epoch",
        "eval accuracy per epoch",
        "latency distribution",
        "latency per run, in run order",
    ):
        assert chart in labels, (chart, labels)
    text = parser.plain_text()
    for expected in (
        "step 0: prune",
        "step 1: distill",
        "step 2: quantize",
        "Sensitivity ranking",
        "conv1",
        "onnxruntime",
    ):
        assert expected in text, expected
    assert "kept: epoch" in page and "train loss" in page
    assert len(page.encode()) < ONE_MB / 4 and "could not be drawn" not in page
    written = write_report(tmp_path / "report.html", metrics, context).read_text(encoding="utf-8")
    assert "step 1: distill" in parse(written).plain_text()


def test_report_of_prune_quantize(fast_job) -> None:
    metrics, context = fast_job
    page = render_report(metrics, context)
    parser = parse(page)
    assert_self_contained(page, parser)
    labels = parser.svg_labels()
    assert "input vs output" in labels and "latency distribution" in labels
    assert "channels per layer before (grey) and kept (blue)" in labels
    text = parser.plain_text()
    assert "Sensitivity ranking" in text
    assert "tensor 'logits' is a graph output" in text  # why the last group stayed intact
    assert "could not be drawn" not in page
    assert "top-1 agreement" in text
    assert all(package in context.versions for package in ("onnx", "onnxruntime", "numpy"))
    # the interleaved per-run samples reach the report
    assert len(metrics["input"]["latency"]["samples_ms"]) == metrics["input"]["latency"]["runs"]


def test_report_of_a_large_model_stays_small(fast_job) -> None:
    """Thousands of nodes, groups and latency runs: tables and charts are capped, the page stays far below 1 MB."""
    metrics = copy.deepcopy(fast_job[0])
    quantize = metrics["steps"][-1]["details"]
    quantize["sensitivity"] = [
        {"node": f"/layers.{i}/MatMul", "op_type": "MatMul", "error": 1e-3 / (i + 1), "local_error": 1e-4 / (i + 1)}
        for i in range(5000)
    ]
    quantize["nodes_kept_float"] = [f"/layers.{i}/MatMul" for i in range(500)]
    prune = metrics["steps"][0]["details"]
    prune["groups"] = [
        {"producers": [f"/conv{i}"], "channels": 256, "kept": 128, "status": "pruned" if i % 5 else "skipped",
         "reason": None if i % 5 else "feeds a Reshape with a constant shape"}
        for i in range(3000)
    ]  # fmt: skip
    for side in ("input", "output"):
        metrics[side]["latency"]["samples_ms"] = [0.5 + (i % 97) / 100 for i in range(50_000)]
    page = render_report(metrics)
    parse(page)
    assert len(page.encode()) < ONE_MB / 2 and "could not be drawn" not in page
    assert "Left intact (600)" in page and "All groups (3000)" in page
    assert "4960 less sensitive nodes not shown" in page


HOSTILE = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>&amp;"


def test_hostile_names_are_escaped_everywhere(fast_job) -> None:
    metrics, _ = fast_job
    metrics = copy.deepcopy(metrics)
    metrics["fidelity"]["outputs"] = {HOSTILE: next(iter(metrics["fidelity"]["outputs"].values()))}
    quantize = metrics["steps"][-1]["details"]
    quantize["sensitivity"][0]["node"] = HOSTILE
    quantize["nodes_kept_float"] = [HOSTILE]
    quantize["reason"] = HOSTILE
    prune = metrics["steps"][0]["details"]
    prune["groups"][0]["producers"] = [HOSTILE]
    prune["groups"][-1]["reason"] = HOSTILE
    metrics["steps"][0]["type"] = HOSTILE
    context = ReportContext(title=HOSTILE, job_id=HOSTILE, status=HOSTILE, error=HOSTILE, spec={HOSTILE: HOSTILE})
    page = render_report(metrics, context)
    parser = parse(page)
    assert_self_contained(page, parser)
    assert HOSTILE not in page and "<script>" not in page and "<img" not in page
    assert HOSTILE in parser.plain_text()  # shown as text, once decoded


def _broken_variants(metrics: dict[str, Any]) -> list[Any]:
    variants: list[Any] = [
        None,
        {},
        [],
        "not metrics",
        {"steps": None},
        {"steps": [{}]},
        {"steps": [{"type": "prune"}]},
    ]
    for key in metrics:
        variants.append({k: v for k, v in metrics.items() if k != key})
    odd = copy.deepcopy(metrics)
    odd["input"]["latency"] = {"median_ms": None, "samples_ms": ["x", None, float("nan")]}
    odd["fidelity"] = {"outputs": {"y": {"cosine": None, "confusion": [[1, 2], [3]]}}, "accuracy": "high"}
    odd["ratios"] = None
    for step in odd["steps"]:
        step["details"] = {key: "?" for key in step["details"]}
        step["fidelity"] = 3
    variants.append(odd)
    failed = {"steps": copy.deepcopy(metrics["steps"][:1])}  # a job that failed in its second step
    variants.append(failed)
    return variants


def test_partial_and_failed_metrics_render_without_raising(fast_job) -> None:
    metrics, context = fast_job
    for variant in _broken_variants(metrics):
        page = render_report(variant, ReportContext(status="failed", error="step 1 (quantize) failed: boom"))
        parser = parse(page)
        assert "step 1 (quantize) failed: boom" in parser.plain_text()
        assert "could not be drawn" not in page, json.dumps(variant, default=str)[:300]
    assert "No step finished." in render_report({}, context)


def test_confusion_matrix_is_drawn_when_the_metrics_carry_one(fast_job) -> None:
    metrics = copy.deepcopy(fast_job[0])
    output = next(iter(metrics["fidelity"]["outputs"].values()))
    output["confusion"] = [[40, 1, 0], [2, 35, 0], [0, 0, 22]]
    output["classes"] = ["cat", "dog", "<bird>"]
    output["worst_sample_cosine"] = 0.42
    page = render_report(metrics)
    parser = parse(page)
    assert any(label.startswith("top-1 confusion of output") for label in parser.svg_labels())
    assert "&lt;bird&gt;" in page and "worst sample cosine" in page


def test_cli_writes_the_report_next_to_its_output(digits_cnn, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(compress)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"steps": [{"type": "quantize", "mode": "dynamic"}]}))
    eval_npz = digits_cnn.write_npz(tmp_path / "eval.npz", split="test", limit=200)
    report = tmp_path / "out" / "report.html"
    args = [
        str(digits_cnn.path),
        "--spec",
        str(spec),
        "-o",
        str(tmp_path / "out" / "m.onnx"),
        "--eval-data",
        str(eval_npz),
    ]
    result = CliRunner().invoke(app, [*args, "--report", str(report), "--latency-runs", "5"])
    assert result.exit_code == 0, result.output
    page = report.read_text(encoding="utf-8")
    parser = parse(page)
    assert "step 0: quantize" in parser.plain_text() and "eval.npz" not in page  # roles, not paths
    assert "input vs output" in parser.svg_labels()

    spec.write_text(json.dumps({"steps": [{"type": "distill", "epochs": 1}]}))  # no train data: fails
    failed = tmp_path / "failed.html"
    result = CliRunner().invoke(app, [*args, "--report", str(failed)])
    assert result.exit_code == 2
    text = parse(failed.read_text(encoding="utf-8")).plain_text()
    assert "The job failed" in text and "train" in text
