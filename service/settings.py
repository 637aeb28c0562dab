"""Service settings, read from the environment (and `.env`); every limit lives here with a sane default.

Shared by the API and the workers; the engine's own knobs (`EngineSettings`) are inherited, so each is an
environment variable too and reaches the engine through `Settings.engine_settings()`.
"""

from __future__ import annotations

import base64
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, computed_field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from compression.settings import EngineSettings
from service.engine_env import EngineKnobsSource
from service.status import TERMINAL_WEBHOOK_EVENTS, WebhookEvent

MiB = 1024 * 1024


class Settings(BaseSettings, EngineSettings):
    """Service settings; the engine's knobs (EngineSettings: latency runs, quantize/prune/distill limits)
    are inherited, so every one of them is an environment variable too."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The engine's knobs come from their flat variables (`LATENCY_RUNS`), below explicit arguments."""
        return init_settings, EngineKnobsSource(settings_cls), env_settings, dotenv_settings, file_secret_settings

    data_dir: Path = Field(Path("data"), description="root for the embedded database, broker and artifacts")
    database_url: str | None = Field(None, description="SQLAlchemy URL of the job store; default SQLite in DATA_DIR")
    broker_url: str | None = Field(None, description="Celery broker; default kombu's SQLAlchemy transport on SQLite")
    queue_name: str = Field("compress", description="Celery queue the api publishes to and workers consume")
    artifact_store: Literal["local", "s3"] = Field(
        "local", description="where models, datasets and results live: a folder (shared volume) or an S3 bucket"
    )
    artifacts_dir: Path | None = Field(None, description="local artifact root; default DATA_DIR/artifacts")
    s3_bucket: str | None = Field(None, description="bucket for ARTIFACT_STORE=s3 (credentials: the AWS_* variables)")
    s3_prefix: str = Field("", description="key prefix inside the bucket")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO); empty for AWS")

    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated bearer tokens, each its own tenant; auth is off while this, ADMIN_API_KEYS "
        "and the database's keys (`onnx-compress keys create`) are all empty",
    )
    admin_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated bearer tokens that see every tenant's resources"
    )
    max_model_bytes: int = Field(2048 * MiB, description="upload limit for .onnx files (413 past it)")
    max_dataset_bytes: int = Field(1024 * MiB, description="upload limit for .npz datasets (413 past it)")
    max_dataset_uncompressed_bytes: int = Field(
        4096 * MiB, ge=1, description="total size of a dataset's arrays once unpacked, read from the .npy headers (413)"
    )
    max_json_body_bytes: int = Field(MiB, ge=1024, description="request body limit for JSON routes (413 past it)")
    max_input_sample_bytes: int = Field(
        512 * MiB, ge=1, description="bytes one sample of a model input may declare (fixed dims x dtype); 422 past it"
    )
    model_validation_memory_bytes: int = Field(
        4096 * MiB,
        ge=256 * MiB,
        description="address space of the child process that validates an uploaded model (the API never loads "
        "one); a model that needs more is refused (422)",
    )
    model_validation_seconds: float = Field(
        120.0, gt=0, description="longest an uploaded model's validation may take; past it the upload is refused (422)"
    )
    max_label_value: int = Field(
        1_000_000, ge=1, description="largest class index a dataset's integer `labels` may hold (422 past it)"
    )
    max_steps: int = Field(16, ge=1, description="steps allowed in one job spec")
    jobs_page_limit: int = Field(100, ge=1, description="largest page of GET /v1/jobs, /v1/models and /v1/datasets")
    max_prefer_wait_seconds: int = Field(
        60, ge=0, description="longest `Prefer: wait=N` long-poll GET /v1/jobs/{id} honours (0: never waits)"
    )

    outbound_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated host names (`*.example.com` wildcards) and CIDRs the server may send requests "
        "to (webhooks, URL imports) although they are loopback, private, link-local or otherwise non-public",
    )
    outbound_allow_http: bool = Field(False, description="allow plain http:// outbound URLs (default: https only)")
    outbound_ca_bundle: Path | None = Field(
        None,
        description="PEM file of extra CA certificates outbound HTTPS (webhooks, URL imports) trusts besides the "
        "default bundle, e.g. an internal model registry's private CA",
    )
    webhook_secret: str | None = Field(
        None,
        repr=False,
        description="Standard Webhooks signing secret (`whsec_` + base64 of 24-64 random bytes); webhooks are off "
        "while it is empty",
    )
    webhook_url: str | None = Field(None, description="default webhook for jobs submitted without one")
    webhook_events: Annotated[list[WebhookEvent], NoDecode] = Field(
        default_factory=lambda: [event.value for event in TERMINAL_WEBHOOK_EVENTS],
        validate_default=True,
        description="comma-separated events WEBHOOK_URL receives (job.started, job.succeeded, job.failed, "
        "job.canceled)",
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="timeout of one webhook delivery attempt")
    webhook_max_attempts: int = Field(8, ge=1, description="delivery attempts of one webhook before it is given up")
    webhook_retry_base_seconds: float = Field(
        5.0, gt=0, description="delay before the 2nd attempt; it doubles after each failed attempt"
    )
    webhook_retry_max_seconds: float = Field(3600.0, gt=0, description="longest delay between two attempts")
    webhook_queue_name: str | None = Field(
        None, description="Celery queue of webhook deliveries, consumed by the workers too; default QUEUE_NAME.webhooks"
    )

    job_retention_days: float = Field(
        30,
        ge=0,
        description="finished jobs older than this (since they ended) are deleted with their artifacts "
        "by the workers' retention sweep; 0 keeps them forever",
    )
    upload_retention_days: float = Field(
        30,
        ge=0,
        description="uploaded models and datasets older than this are deleted by the retention sweep "
        "unless a queued or running job uses them; 0 keeps them forever",
    )
    retention_sweep_seconds: float = Field(3600, gt=0, description="how often a worker runs the retention sweep")
    retention_batch: int = Field(500, ge=1, description="jobs, and uploads, one retention sweep deletes at most")
    delete_wait_seconds: float = Field(
        10, ge=0, description="DELETE /v1/jobs/{id} of a running job waits this long for it to stop after canceling"
    )
    sse_max_stream_seconds: float = Field(
        600,
        gt=0,
        description="an event stream (GET /v1/jobs/{id}/events as text/event-stream) ends after this "
        "long; clients reconnect with Last-Event-ID",
    )
    sse_heartbeat_seconds: float = Field(15, gt=0, description="idle event streams send a comment this often")
    sse_poll_seconds: float = Field(0.5, gt=0, description="how often an event stream reads new events")
    sse_max_streams: int = Field(
        200, ge=1, description="event streams one api process serves at once; more are answered 503 with Retry-After"
    )

    worker_concurrency: int = Field(1, ge=1, description="jobs one worker runs at once (they are CPU-bound)")
    job_soft_time_limit: int = Field(3600, ge=1, description="seconds before a job is asked to stop (fails)")
    job_hard_time_limit: int = Field(3900, ge=1, description="seconds before the worker process is killed")
    broker_visibility_timeout: int = Field(
        4200, ge=1, description="Redis: seconds before an unacked task is redelivered; keep above the hard limit"
    )
    job_lease_seconds: int = Field(
        300, ge=2, description="a running job whose heartbeat is older is taken over (its worker is presumed dead)"
    )
    job_heartbeat_seconds: float = Field(15.0, gt=0, description="how often a worker renews its lease")
    queued_redeliver_seconds: int = Field(
        120,
        ge=1,
        description="a job still queued this long after it was queued, while the broker holds fewer messages than "
        "there are queued jobs (a broker restart lost them, or the API stopped before queueing), is queued again",
    )
    job_max_attempts: int = Field(3, ge=1, description="runs of one job (crashes included) before it fails")
    cancel_poll_seconds: float = Field(0.5, gt=0, description="how often a running job reads its cancel flag")

    host: str = Field("127.0.0.1", description="address `onnx-compress api|serve` binds")
    port: int = Field(8000, description="port `onnx-compress api|serve` listens on")
    job_read_cache_mb: int = Field(
        16,
        ge=0,
        description="GET /v1/jobs/{id} keeps each job's rendered answer (per api process, at most this many MB) and "
        "reuses it while the job's change markers are unchanged; 0 renders every read",
    )

    log_format: Literal["json", "text"] = Field(
        "json", description="api and worker logs: one JSON object per line, or plain text lines"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="the lowest level logged")
    metrics_enabled: bool = Field(True, description="serve Prometheus metrics at GET /metrics (counts only)")
    metrics_token: str | None = Field(
        None, repr=False, description="when set, GET /metrics needs `Authorization: Bearer <this token>`"
    )
    metrics_db_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="/metrics reads job counts, step durations and heartbeats from the database (and the queue "
        "length from the broker) at most this often; scrapes in between get the last figures",
    )
    public_base_url: str | None = Field(
        None,
        description="the API's public URL (e.g. `https://compress.example.com`, with the proxy's path prefix if any) "
        "that the absolute `urls` in responses start with; default: each request's own scheme, host and root path",
    )

    url_import_timeout_seconds: float = Field(
        30.0, gt=0, description='URL imports (`POST /v1/models` with `{"url": ...}`): connect and read timeout'
    )
    url_import_max_seconds: float = Field(
        900.0, gt=0, description="longest one URL import may take, the download and the checks included (422 past it)"
    )
    url_import_max_redirects: int = Field(
        5, ge=0, description="redirects a URL import follows (each target checked against the outbound rules)"
    )

    @field_validator("api_keys", "admin_api_keys", "outbound_allowlist", "webhook_events", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):  # from the environment: comma-separated
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: str | None) -> str | None:
        if not value:
            return None
        text = value
        try:
            key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
        except ValueError:
            key = b""
        if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
            raise ValueError(
                "WEBHOOK_SECRET must be `whsec_` followed by the base64 of 24 to 64 random bytes, e.g. "
                "python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\""
            )
        return value

    @model_validator(mode="after")
    def _limits_in_order(self) -> Settings:
        if not self.job_soft_time_limit < self.job_hard_time_limit < self.broker_visibility_timeout:
            raise ValueError(
                "need JOB_SOFT_TIME_LIMIT < JOB_HARD_TIME_LIMIT < BROKER_VISIBILITY_TIMEOUT, or Redis redelivers "
                "running jobs and the hard limit kills them before they can fail cleanly"
            )
        if self.job_heartbeat_seconds * 2 > self.job_lease_seconds:
            raise ValueError("JOB_HEARTBEAT_SECONDS must be at most half of JOB_LEASE_SECONDS")
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def embedded(self) -> bool:
        return self.database_url is None and self.broker_url is None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'jobs.sqlite').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def resolved_webhook_queue_name(self) -> str:
        return self.webhook_queue_name or f"{self.queue_name}.webhooks"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return (self.artifacts_dir or self.data_dir / "artifacts").resolve()

    @property
    def work_dir(self) -> Path:
        return (self.data_dir / "work").resolve()

    def engine_settings(self) -> EngineSettings:
        return EngineSettings.model_validate(self.model_dump(include=set(EngineSettings.model_fields)))


@lru_cache
def get_settings() -> Settings:
    return Settings()
