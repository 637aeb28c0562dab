"""Run a small real pipeline for the report tests, and check a report as an HTML parser sees it."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from compression.datasets import Dataset, DatasetBundle
from compression.jsonable import to_jsonable
from compression.model_info import inspect_model
from compression.pipeline import run_pipeline
from compression.settings import EngineSettings
from compression.spec import CompressionSpec

FAST = EngineSettings(latency_runs=8, latency_warmup=1)
VOID = {"meta", "br", "img", "link", "input", "hr", "col", "source", "wbr", "area", "base", "embed", "track"}
PRUNE = {"type": "prune", "method": "structured", "sparsity": 0.3}
QUANTIZE = {"type": "quantize", "mode": "dynamic", "max_accuracy_drop": 0.05, "speed_guard": False}


def digits_bundle(model: Any) -> DatasetBundle:
    inputs = inspect_model(model.path).inputs
    return DatasetBundle(
        train=Dataset.bind({model.input_name: model.x_train[:512], "labels": model.y_train[:512]}, inputs),
        eval=Dataset.bind({model.input_name: model.x_test, "labels": model.y_test}, inputs),
    )


def run_job(
    model: Any, steps: list[dict[str, Any]], work: Path
) -> tuple[dict[str, Any], CompressionSpec, DatasetBundle]:
    spec = CompressionSpec.model_validate({"steps": steps})
    bundle = digits_bundle(model)
    result = run_pipeline(model.path, spec, bundle, work, settings=FAST)
    return to_jsonable(result.metrics), spec, bundle


class PageParser(HTMLParser):
    """Collects tags, ids and svg labels; records end tags that do not close the innermost open element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.mismatched: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if self.stack and self.stack[-1] == tag:
            self.stack.pop()
        else:
            self.mismatched.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def ids(self) -> set[str]:
        return {str(attrs["id"]) for _, attrs in self.tags if attrs.get("id")}

    def svg_labels(self) -> list[str]:
        return [str(attrs.get("aria-label")) for tag, attrs in self.tags if tag == "svg"]

    def count(self, name: str) -> int:
        return sum(1 for tag, _ in self.tags if tag == name)

    def plain_text(self) -> str:
        return " ".join(self.text)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    assert not parser.mismatched, f"end tags that close nothing open: {parser.mismatched[:10]}"
    assert parser.stack == [], f"elements left open: {parser.stack}"
    return parser


def assert_self_contained(page: str, parser: PageParser) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert parser.count("script") == 0 and parser.count("link") == 0 and parser.count("img") == 0
    for _, attrs in parser.tags:
        assert "src" not in attrs
        href = attrs.get("href")
        assert href is None or href.startswith("#"), href
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "@import" not in page and "url(" not in page
