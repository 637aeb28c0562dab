"""HTTP request and response bodies: every field typed, so the OpenAPI says what the API returns."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from compression.model_info import TensorSpec
from compression.spec import Step
from service.status import TERMINAL_WEBHOOK_EVENTS, DeliveryStatus, EventKind, JobStatus, StepState, WebhookEvent

RESOURCE_ID = r"^[A-Za-z0-9_-]{1,64}$"  # what new_id() makes; anything else (a NUL byte, a slash) is refused


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value  # stored as UTC when a backend drops it


UtcDatetime = Annotated[datetime, AfterValidator(_aware)]
ResourceId = Annotated[str, Field(pattern=RESOURCE_ID, description="an id this API returned")]


class ModelOut(BaseModel):
    id: str
    filename: str
    sha256: str
    size_bytes: int
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_counts: dict[str, int]
    created_at: UtcDatetime


class ArrayInfo(BaseModel):
    shape: list[int]
    dtype: str


class DatasetOut(BaseModel):
    id: str
    filename: str
    sha256: str
    size_bytes: int
    arrays: dict[str, ArrayInfo]
    n_samples: int
    has_labels: bool
    created_at: UtcDatetime


class JobDatasets(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calibration: ResourceId | None = Field(None, description="dataset id for quantization calibration")
    train: ResourceId | None = Field(None, description="dataset id for distillation / fine-tuning")
    eval: ResourceId | None = Field(
        None, description="dataset id for fidelity and accuracy (synthetic inputs without it)"
    )


def _non_finite_at(value: Any, path: str) -> str | None:
    """The path of the first NaN or infinite number in a parsed JSON value (1e999 parses as inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite_at(item, f"{path}.{key}")
        if found:
            return found
    return None


MAX_WEBHOOK_URL_LENGTH = 2048


class WebhookCreate(BaseModel):
    """Where to POST the job's events (signed per Standard Webhooks) and which events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=MAX_WEBHOOK_URL_LENGTH,
        description="an https:// URL on a public host (the server's OUTBOUND_ALLOWLIST may allow others)",
        examples=["https://ci.example.com/hooks/onnx-compress"],
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(TERMINAL_WEBHOOK_EVENTS),
        min_length=1,
        max_length=len(WebhookEvent),
        description="the events to send; default the terminal ones (job.succeeded, job.failed, job.canceled)",
    )


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model_id": "3f2c9a0e5b7d4c1e8a6f0b2d4e6c8a0f",
                    "steps": [{"type": "quantize", "mode": "dynamic"}],
                    "datasets": {},
                },
                {
                    "model_id": "3f2c9a0e5b7d4c1e8a6f0b2d4e6c8a0f",
                    "steps": [
                        {"type": "prune", "method": "magnitude", "sparsity": 0.5},
                        {"type": "quantize", "mode": "static"},
                    ],
                    "datasets": {"calibration": "9a8b7c6d5e4f30211203f4e5d6c7b8a9"},
                },
            ]
        },
    )

    model_id: ResourceId
    steps: list[Step] = Field(min_length=1)
    datasets: JobDatasets = Field(default_factory=JobDatasets)
    webhook: WebhookCreate | None = Field(
        None, description="POST the job's events here, signed (default: the server's WEBHOOK_URL, if any)"
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _finite_numbers(cls, value: Any) -> Any:
        found = _non_finite_at(value, "steps")
        if found:
            raise ValueError(f"{found} is NaN or infinite: every number must be finite")
        return value


class JobError(BaseModel):
    code: str = Field(description="stable machine code, e.g. 'invalid_model', 'dataset_mismatch', 'canceled'")
    message: str


class ModelMetricsOut(BaseModel):
    """Size, parameters, latency and accuracy of one model (the job's input or output)."""

    model_config = ConfigDict(extra="allow")

    size_bytes: int
    parameters: int
    latency: dict[str, Any] | None = Field(None, description="median_ms, p90_ms, mean_ms, runs, threads, batch_size")
    accuracy: float | None = None


class StepMetricsOut(BaseModel):
    """What one step did; `details` is the step type's own report."""

    model_config = ConfigDict(extra="allow")

    index: int
    type: str
    changed: bool
    wall_time_s: float | None = None
    size_bytes: int
    parameters: int
    fidelity: dict[str, Any] | None = Field(None, description="agreement of the step's output with the original")
    details: dict[str, Any] = Field(default_factory=dict)


class JobMetricsOut(BaseModel):
    """A finished job's metrics (the same document as the `metrics.json` artifact)."""

    model_config = ConfigDict(extra="allow")

    input: ModelMetricsOut
    output: ModelMetricsOut
    ratios: dict[str, float | None] = Field(description="output / input: size, parameters, latency")
    latency_ratio: dict[str, Any] | None = Field(None, description="ratio, low, high, confidence, rounds, conclusive")
    latency_measurement: dict[str, Any] = Field(default_factory=dict)
    fidelity: dict[str, Any] = Field(description="agreement of the output model with the original")
    steps: list[StepMetricsOut]
    wall_time_s: float | None = None


class StepStatus(BaseModel):
    index: int
    type: str
    config: dict[str, Any] = Field(description="the step as submitted, defaults filled in")
    status: StepState
    metrics: StepMetricsOut | None = None


class JobUrls(BaseModel):
    """Links to the job's resources; `model` and `metrics` once it succeeded."""

    self: str
    events: str
    cancel: str
    model: str | None = None
    metrics: str | None = None


class JobOut(BaseModel):
    id: str
    model_id: str
    status: JobStatus
    stage: str | None
    progress: float
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    error: JobError | None
    datasets: JobDatasets
    steps: list[StepStatus]
    metrics: JobMetricsOut | None
    attempt: int
    cancel_requested: bool
    urls: JobUrls


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class ModelPage(BaseModel):
    items: list[ModelOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last one")


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last one")


class JobEventOut(BaseModel):
    id: int
    kind: EventKind
    message: str
    progress: float | None
    stage: str | None
    attempt: int
    data: dict[str, Any] | None
    created_at: UtcDatetime


class WebhookAttemptOut(BaseModel):
    """One HTTP attempt of a webhook delivery."""

    number: int = Field(description="1 for the first attempt")
    started_at: UtcDatetime
    duration_ms: float
    status_code: int | None = Field(description="the receiver's HTTP status; null when it did not answer")
    error: str | None = Field(description="why the attempt failed (non-2xx answer, timeout, refused URL); null on 2xx")


class WebhookDeliveryOut(BaseModel):
    """One event of the job sent to its webhook; every attempt carries `id` as its `webhook-id` header."""

    id: str = Field(description="the `webhook-id` header of every attempt (receivers deduplicate on it)")
    event: WebhookEvent
    url: str
    status: DeliveryStatus = Field(description="pending (attempts remain), succeeded (a 2xx answer) or failed")
    next_attempt_at: UtcDatetime | None = Field(description="when the next attempt is due, while pending")
    created_at: UtcDatetime
    finished_at: UtcDatetime | None
    attempts: list[WebhookAttemptOut]
