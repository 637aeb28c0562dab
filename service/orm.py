"""Job store tables: uploaded models and datasets, jobs, and their progress events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from service.status import DeliveryStatus, EventKind, JobStatus, WebhookEvent

DEFAULT_TENANT = "default"  # owns everything made while auth is off (no keys configured at all)
TENANT_ID_LENGTH = 32


def owner_column() -> Mapped[str]:
    """The tenant a row belongs to (a `tenants.id`, or a tenant derived from an API_KEYS/ADMIN_API_KEYS key)."""
    return mapped_column(String(TENANT_ID_LENGTH), index=True, default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


E = TypeVar("E", bound=StrEnum)


class EnumText(TypeDecorator[E]):
    """A StrEnum stored as plain text (no database enum type to migrate); rows read back as enum members."""

    impl = String
    cache_ok = True

    def __init__(self, enum: type[E], length: int) -> None:
        super().__init__(length)
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: Dialect) -> E | None:
        return None if value is None else self.enum(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time, always timezone-aware in UTC: PostgreSQL stores `timestamptz`; SQLite, which has no
    time zones, stores the UTC wall clock and this type puts UTC back on what it reads. Naive values are refused,
    so comparisons never mix naive and aware datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware one (service.orm.utcnow())")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


class ModelRecord(Base):
    __tablename__ = "models"
    __table_args__ = (Index("ix_models_created", "created_at", "id"),)  # cursor pagination

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)
    storage_key: Mapped[str] = mapped_column(String(512))
    owner_id: Mapped[str] = owner_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetRecord(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_created", "created_at", "id"),)  # cursor pagination

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    arrays: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_samples: Mapped[int] = mapped_column(Integer)
    storage_key: Mapped[str] = mapped_column(String(512))
    owner_id: Mapped[str] = owner_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_created", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),  # per tenant
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    # a plain reference, like `datasets`: the model may be deleted while finished jobs keep naming it
    model_id: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    datasets: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[JobStatus] = mapped_column(EnumText(JobStatus, 16), default=JobStatus.QUEUED)
    stage: Mapped[str | None] = mapped_column(String(64), default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    steps: Mapped[list[Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    # last time a message for this job was published (the API at submission, then the recovery sweeps)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    owner_id: Mapped[str] = owner_column()
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    # {"url", "events", "job_url"}: where this job's webhook deliveries go (service.webhooks), None: nowhere
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    kind: Mapped[EventKind] = mapped_column(EnumText(EventKind, 32))
    message: Mapped[str] = mapped_column(Text)
    progress: Mapped[float | None] = mapped_column(Float, default=None)
    stage: Mapped[str | None] = mapped_column(String(64), default=None)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Tenant(Base):
    """A customer of the service: owns models, datasets and jobs; its API keys are `ApiKey` rows."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(TENANT_ID_LENGTH), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key of a tenant, stored as the sha256 of its token (the token itself is shown once, never stored)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """One event of one job sent to its webhook (service.webhooks); the id is the `webhook-id` of every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("job_id", "event", name="uq_webhook_deliveries_job_event"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    event: Mapped[WebhookEvent] = mapped_column(EnumText(WebhookEvent, 32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[DeliveryStatus] = mapped_column(EnumText(DeliveryStatus, 16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # when the next attempt is due; NULL: no message published yet (the sweep publishes it)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: its number, when, and the answer (status code) or the error."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (UniqueConstraint("delivery_id", "number", name="uq_webhook_attempts_delivery_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
