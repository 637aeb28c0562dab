"""HTTP request and response bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from compression.model_info import TensorSpec
from compression.spec import Step
from service.status import EventKind, JobStatus, StepState


class ApiModel(BaseModel):
    @field_serializer("*", when_used="json")
    def _aware(self, value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is None:  # SQLite drops the zone; stored as UTC
            return value.replace(tzinfo=UTC)
        return value


class ModelOut(ApiModel):
    id: str
    filename: str
    sha256: str
    size_bytes: int
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_counts: dict[str, int]
    created_at: datetime


class ArrayInfo(BaseModel):
    shape: list[int]
    dtype: str


class DatasetOut(ApiModel):
    id: str
    filename: str
    sha256: str
    size_bytes: int
    arrays: dict[str, ArrayInfo]
    n_samples: int
    has_labels: bool
    created_at: datetime


class JobDatasets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calibration: str | None = Field(None, description="dataset id for quantization calibration")
    train: str | None = Field(None, description="dataset id for distillation / fine-tuning")
    eval: str | None = Field(None, description="dataset id for fidelity and accuracy (synthetic inputs without it)")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str
    steps: list[Step] = Field(min_length=1)
    datasets: JobDatasets = Field(default_factory=JobDatasets)


class JobError(BaseModel):
    code: str
    message: str


class StepStatus(BaseModel):
    index: int
    type: str
    config: dict[str, Any]
    status: StepState
    metrics: dict[str, Any] | None = None


class JobOut(ApiModel):
    id: str
    model_id: str
    status: JobStatus
    stage: str | None
    progress: float
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: JobError | None
    datasets: JobDatasets
    steps: list[StepStatus]
    metrics: dict[str, Any] | None
    attempt: int
    cancel_requested: bool
    urls: dict[str, str]


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class JobEventOut(ApiModel):
    id: int
    kind: EventKind
    message: str
    progress: float | None
    stage: str | None
    attempt: int
    data: dict[str, Any] | None
    created_at: datetime
