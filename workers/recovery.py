"""Requeues jobs whose worker died: a thread in every worker looks for running jobs with stale leases.

Redis redelivers an unacked message only after the visibility timeout (above the hard time limit),
and the embedded SQLite broker does not redeliver at all, so crash recovery cannot wait for the broker.
A requeued job is claimed by compare-and-set, so duplicates from both paths run it once.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery.signals import worker_process_init, worker_ready, worker_shutdown

from service import job_store
from service.db import forget_inherited_connections, init_db, session_scope
from service.queue import enqueue_job
from service.settings import Settings, get_settings
from service.status import EventKind

log = logging.getLogger(__name__)
_stop = threading.Event()


def requeue_stale_jobs(settings: Settings) -> list[str]:
    with session_scope(settings) as session:
        stale = job_store.stale_running_jobs(session, timedelta(seconds=settings.job_lease_seconds))
        for job_id in stale:
            job_store.add_event(
                session, job_id, EventKind.REQUEUED, "the worker running this job stopped; job requeued"
            )
    for job_id in stale:
        log.warning("job %s: worker lease expired; requeueing", job_id)
        enqueue_job(settings, job_id)
    return stale


def _watch(settings: Settings) -> None:
    interval = max(1.0, settings.job_lease_seconds / 2)
    while True:
        try:
            requeue_stale_jobs(settings)
        except Exception:
            log.exception("stale-job check failed; retrying")
        if _stop.wait(interval):
            return


@worker_ready.connect
def _start_watch(**_: object) -> None:
    settings = get_settings()
    init_db(settings)
    threading.Thread(target=_watch, args=(settings,), name="stale-job-watch", daemon=True).start()


@worker_shutdown.connect
def _stop_watch(**_: object) -> None:
    _stop.set()


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    forget_inherited_connections()
