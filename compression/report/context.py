"""What the report shows besides the metrics: the spec, the datasets, library versions, the job's state."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from pydantic import BaseModel, Field

from compression.datasets import Dataset, DatasetBundle

VERSIONED_PACKAGES = ("onnx-compress", "onnx", "onnxruntime", "numpy", "torch", "onnx-ir")


class ArraySummary(BaseModel):
    shape: list[int | str]
    dtype: str


class DatasetSummary(BaseModel):
    role: str = Field(description="calibration, train or eval")
    name: str | None = Field(None, description="file name or dataset id, when known")
    n_samples: int | None = None
    arrays: dict[str, ArraySummary] = Field(default_factory=dict)
    has_labels: bool = False
    synthetic: bool = False


class ReportContext(BaseModel):
    """Everything optional: a report renders from the metrics alone, or from nothing but an error."""

    title: str | None = Field(None, description="e.g. the model's file name")
    job_id: str | None = None
    status: str | None = Field(None, description="job status as the caller names it (succeeded, failed, ...)")
    error: str | None = Field(None, description="why the job failed, shown at the top")
    created_at: str | None = None
    spec: dict[str, Any] | None = None
    datasets: list[DatasetSummary] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)


def collect_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the results (absent ones are left out)."""
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def summarize_dataset(role: str, dataset: Dataset, name: str | None = None) -> DatasetSummary:
    return DatasetSummary(
        role=role,
        name=name,
        n_samples=dataset.n_samples,
        arrays={key: ArraySummary(shape=list(a.shape), dtype=a.dtype.name) for key, a in dataset.arrays.items()},
        has_labels=dataset.labels is not None,
        synthetic=dataset.synthetic,
    )


def summarize_bundle(bundle: DatasetBundle, names: dict[str, str] | None = None) -> list[DatasetSummary]:
    names = names or {}
    return [
        summarize_dataset(role, dataset, names.get(role))
        for role, dataset in (("calibration", bundle.calibration), ("train", bundle.train), ("eval", bundle.eval))
        if dataset is not None
    ]


def job_context(
    title: str | None,
    spec: BaseModel | dict[str, Any] | None,
    bundle: DatasetBundle | None = None,
    error: str | None = None,
    dataset_names: dict[str, str] | None = None,
) -> ReportContext:
    """The context of a job run in this process (the CLI): status from `error`, versions of this environment."""
    spec_data = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else spec
    return ReportContext(
        title=title,
        status="failed" if error else "succeeded",
        error=error,
        spec=spec_data,
        datasets=summarize_bundle(bundle, dataset_names) if bundle is not None else [],
        versions=collect_versions(),
    )
