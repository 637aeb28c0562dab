"""Runs one job: claim it, fetch its inputs, run the engine, store artifacts, record the outcome."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded

from compression.datasets import DatasetBundle
from compression.errors import CompressionError, JobCanceledError, MissingDatasetError, MissingModelError
from compression.jsonable import to_jsonable
from compression.model_info import inspect_model
from compression.pipeline import run_pipeline
from compression.spec import CompressionSpec
from service import job_store, webhooks
from service.artifacts import ArtifactStore, get_store, job_artifact_key
from service.db import session_scope
from service.job_store import ClaimOutcome
from service.messages import scrub_paths
from service.orm import DatasetRecord, Job, ModelRecord
from service.settings import Settings
from service.status import EventKind, JobStatus
from workers.progress import Heartbeat, JobProgressSink, LeaseLost

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """How one delivery of a job's task ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    SKIPPED = "skipped"  # the job had ended (or was canceled) before this delivery
    BUSY = "busy"  # another attempt holds a live lease
    LOST = "lost"  # this attempt lost its lease mid-run; another one owns the job


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(job_id: str, settings: Settings) -> Outcome:
    lease = timedelta(seconds=settings.job_lease_seconds)
    with session_scope(settings) as session:
        outcome, attempt = job_store.claim(session, job_id, worker_name(), lease)
        if outcome == ClaimOutcome.CANCELED:
            job_store.add_event(session, job_id, EventKind.SKIPPED, "task received for a canceled job; not started")
        if outcome != ClaimOutcome.CLAIMED:
            return Outcome.BUSY if outcome == ClaimOutcome.BUSY else Outcome.SKIPPED
        job = session.get(Job, job_id)
        assert job is not None
        steps = job.steps
        if attempt > settings.job_max_attempts:
            message = (
                f"the job was interrupted {attempt - 1} times (worker crash or hard time limit); "
                f"giving up after JOB_MAX_ATTEMPTS={settings.job_max_attempts}"
            )
            job_store.finish(session, job_id, attempt, JobStatus.FAILED, error=("too_many_attempts", message))
            return Outcome.FAILED

    webhooks.publish_for_job(settings, job_id)  # job.started, when the job's webhook wants it
    sink = JobProgressSink(settings, job_id, attempt, steps)
    work_dir = settings.work_dir / job_id / f"attempt{attempt}"
    try:
        with Heartbeat(settings, job_id, attempt, sink):
            metrics = _execute(job_id, settings, sink, work_dir)
        return _finish(settings, job_id, attempt, sink, JobStatus.SUCCEEDED, metrics=metrics)
    except LeaseLost:
        log.warning("job %s attempt %s lost its lease; another worker runs it now", job_id, attempt)
        return Outcome.LOST
    except JobCanceledError:
        return _finish(settings, job_id, attempt, sink, JobStatus.CANCELED, error=("canceled", "canceled by request"))
    except CompressionError as exc:
        if isinstance(exc.__cause__, SoftTimeLimitExceeded):
            return _finish(settings, job_id, attempt, sink, JobStatus.FAILED, error=_time_limit(settings))
        return _finish(settings, job_id, attempt, sink, JobStatus.FAILED, error=(exc.code, exc.message))
    except SoftTimeLimitExceeded:
        return _finish(settings, job_id, attempt, sink, JobStatus.FAILED, error=_time_limit(settings))
    except MemoryError as exc:  # numpy names the allocation: its shape and size say what is too large
        log.warning("job %s ran out of memory: %s", job_id, exc)
        return _finish(settings, job_id, attempt, sink, JobStatus.FAILED, error=_out_of_memory(exc))
    except Exception as exc:
        log.exception("job %s failed with an internal error", job_id)
        error = ("internal_error", f"{type(exc).__name__}: {exc}"[:2000])
        return _finish(settings, job_id, attempt, sink, JobStatus.FAILED, error=error)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # work/<job_id>/ too, unless another attempt is using it
            work_dir.parent.rmdir()


def _out_of_memory(exc: MemoryError) -> tuple[str, str]:
    what = str(exc).strip() or "an allocation failed"
    return (
        "out_of_memory",
        f"the job ran out of memory: {what}. The model's tensors are too large for this worker at the sample "
        "counts the settings ask for (SYNTHETIC_SAMPLES, EVAL_BATCH_SIZE, a step's calibration_samples): declare "
        "smaller inputs, give a dataset, or lower those settings",
    )


def _time_limit(settings: Settings) -> tuple[str, str]:
    return "time_limit", f"the job ran longer than JOB_SOFT_TIME_LIMIT={settings.job_soft_time_limit} s"


def _finish(
    settings: Settings,
    job_id: str,
    attempt: int,
    sink: JobProgressSink,
    status: JobStatus,
    metrics: dict | None = None,
    error: tuple[str, str] | None = None,
) -> Outcome:
    steps = sink.steps if status == JobStatus.SUCCEEDED else sink.mark_unfinished(status)
    if error is not None:  # engine and onnxruntime messages may name files in the job's directory
        roots = (settings.work_dir, settings.data_dir, settings.resolved_artifacts_dir)
        error = (error[0], scrub_paths(error[1], roots))
    with session_scope(settings) as session:
        owned = job_store.finish(session, job_id, attempt, status, metrics=metrics, error=error, steps=steps)
    webhooks.publish_for_job(settings, job_id)
    return Outcome(status.value) if owned else Outcome.LOST


def _execute(job_id: str, settings: Settings, sink: JobProgressSink, work_dir: Path) -> dict:
    store = get_store(settings)
    inputs_dir = work_dir / "inputs"
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert job is not None
        model = session.get(ModelRecord, job.model_id)
        assert model is not None
        spec = CompressionSpec.model_validate(job.spec)
        dataset_keys = {}
        for role, dataset_id in job.datasets.items():
            if dataset_id:
                record = session.get(DatasetRecord, dataset_id)
                if record is None:
                    raise MissingDatasetError(f"{role} dataset {dataset_id!r} no longer exists")
                dataset_keys[role] = record.storage_key
        model_storage_key = model.storage_key
    sink.progress(0.0, "fetch inputs")
    model_path = store.fetch(model_storage_key, inputs_dir / "model.onnx")
    paths = {role: store.fetch(key, inputs_dir / f"{role}.npz") for role, key in dataset_keys.items()}
    # memory-mapped (compressed members unpacked to the job's directory): memory follows the engine's sample caps
    info = inspect_model(model_path)
    datasets = DatasetBundle.load(paths, info.inputs, scratch=inputs_dir / "datasets", outputs=info.outputs)
    sink.check_canceled()
    result = run_pipeline(
        model_path,
        spec,
        datasets,
        work_dir / "steps",
        sink=sink,
        settings=settings.engine_settings(),
        model_resolver=lambda ref: _resolve_model(settings, store, ref, inputs_dir),
    )
    metrics = to_jsonable(result.metrics)
    metrics_path = work_dir / "metrics.json"
    metrics_path.write_text(json.dumps({"job_id": job_id, **metrics}, indent=2))
    sink.check_canceled()
    store.put_file(job_artifact_key(job_id, "model.onnx"), result.model_path)
    store.put_file(job_artifact_key(job_id, "metrics.json"), metrics_path)
    return metrics


def _resolve_model(settings: Settings, store: ArtifactStore, model_id: str, directory: Path) -> Path:
    """A step that names another uploaded model (a distillation student) gets it by id."""
    with session_scope(settings) as session:
        record = session.get(ModelRecord, model_id)
        if record is None:
            raise MissingModelError(f"model {model_id!r} not found: upload it before submitting the job")
        key = record.storage_key
    return store.fetch(key, directory / f"model-{model_id}.onnx")
