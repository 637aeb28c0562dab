"""Jobs survive crashes, against real processes: a worker SIGKILLed mid-job (embedded: SQLite job store and broker;
production: PostgreSQL + Redis), a job committed whose message never reached the broker, Redis restarted without
persistence with 20 jobs queued, and jobs submitted while Redis is down (kept queued, published by the workers'
sweep once it is back). Every job ends `succeeded` exactly once, and no service process outlives the module.

`RECOVERY_KILLS` (default 1, to keep `make test` short; 10 per mode measured by hand) sets how many SIGKILLs
each mode gets.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.queue import broker_connection
from service.settings import Settings
from service.status import EventKind, JobStatus
from tests.service.client import poll, upload
from tests.service.conftest import FAST, Stack
from tests.service.stack import (
    ServiceProcess,
    drop_postgres_schema,
    free_port,
    kill_group,
    leftover_groups,
    postgres_schema,
    production_env,
    wait_until,
)

pytestmark = pytest.mark.slow  # real api and worker processes

KILLS = int(os.environ.get("RECOVERY_KILLS", "1"))
LEASE = {"JOB_LEASE_SECONDS": "4", "JOB_HEARTBEAT_SECONDS": "1"}
# the victim's job times latency for minutes (never narrow enough to stop early), so it is killed mid-run
# Victims sweep with a lease and redelivery time far beyond the test, so the job of a killed victim is requeued
# by the rescuer's sweep onto the rescuer's queue, never by the next victim's sweep onto the queue the next victim
# itself consumes (where it would time latency for minutes). Their heartbeat is as frequent as the rescuer expects.
VICTIM = {
    "JOB_LEASE_SECONDS": "3600",
    "JOB_HEARTBEAT_SECONDS": "1",
    "QUEUED_REDELIVER_SECONDS": "3600",
    "LATENCY_RUNS": "1000000",
    "LATENCY_TARGET_HALF_WIDTH": "0.000001",
    "LATENCY_MIN_SECONDS": "300",
    "LATENCY_MAX_SECONDS": "600",
}
RESCUER = {**LEASE, "LATENCY_RUNS": "10", "QUEUED_REDELIVER_SECONDS": "3"}
READY_TIMEOUT_S = 180  # a worker's start-up (imports) on a loaded 2-core machine
JOB = {"steps": [{"type": "quantize", "mode": "dynamic"}]}


def submit_job(client: httpx.Client, model_id: str) -> str:
    response = client.post("/v1/jobs", json={"model_id": model_id, **JOB})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def events(client: httpx.Client, job_id: str) -> list[dict]:
    return client.get(f"/v1/jobs/{job_id}/events").json()


def event_kinds(client: httpx.Client, job_id: str) -> list[str]:
    return [event["kind"] for event in events(client, job_id)]


DUPLICATE_GRACE_S = 2.0  # after the last job ended, a duplicate delivery would have run by now


def assert_all_succeeded_once(client: httpx.Client, job_ids: list[str], timeout: float = 120) -> dict[str, list[str]]:
    """Every job ends succeeded, stays so, and has exactly one `succeeded` event; returns their event kinds."""
    deadline = time.monotonic() + timeout
    done = {job_id: poll(client, job_id, timeout=max(1.0, deadline - time.monotonic())) for job_id in job_ids}
    time.sleep(DUPLICATE_GRACE_S)
    kinds = {}
    for job_id, job in done.items():
        assert job["status"] == JobStatus.SUCCEEDED, job
        final = client.get(f"/v1/jobs/{job_id}").json()
        kinds[job_id] = event_kinds(client, job_id)
        assert final["status"] == JobStatus.SUCCEEDED and final["finished_at"] == job["finished_at"]
        assert kinds[job_id].count(EventKind.SUCCEEDED) == 1, kinds[job_id]
        assert client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx").status_code == 200
    return kinds


def assert_succeeded_once(client: httpx.Client, job_id: str, timeout: float = 120) -> list[str]:
    return assert_all_succeeded_once(client, [job_id], timeout)[job_id]


@pytest.fixture(scope="module", autouse=True)
def no_process_outlives_the_module() -> Iterator[None]:
    """SIGKILLed workers, restarted ones, failed tests: every process group these tests started is gone after."""
    yield
    left = leftover_groups()
    for pgid in left:
        kill_group(pgid)
    assert not left, f"service process groups still running after the recovery tests: {left}"


def start_worker_nowait(stack: Stack, **env: str) -> ServiceProcess:
    worker = ServiceProcess("worker", {**stack.env, **env}, stack.root / f"worker{len(stack.processes)}.log")
    stack.processes.append(worker.start())
    return worker


def start_rescuer(stack: Stack) -> ServiceProcess:
    """A worker with a short lease and redelivery time, on a queue of its own: its sweep requeues dead workers'
    jobs and lost messages there, so fresh submissions on the stack's queue reach only the victims."""
    return start_worker_nowait(stack, **RESCUER, QUEUE_NAME=f"{stack.env['QUEUE_NAME']}-rescue")


def kill_workers_mid_job(stack: Stack, model_id: str, kills: int, rescuer: ServiceProcess) -> list[float]:
    """SIGKILL a worker (its whole process group) mid-job, `kills` times; each job must end succeeded once.

    The rescuer (`start_rescuer`) runs all along, and the next victim boots while the rescuer finishes the job.
    Returns the seconds from each kill to the job's success."""
    victim = start_worker_nowait(stack, **VICTIM)
    rescuer.wait_worker_ready(timeout=READY_TIMEOUT_S)
    recoveries = []
    try:
        with stack.client() as client:
            for kill in range(kills):
                victim.wait_worker_ready(timeout=READY_TIMEOUT_S)
                job_id = submit_job(client, model_id)
                poll(client, job_id, timeout=120, until={JobStatus.RUNNING})
                time.sleep(1.0)
                victim.kill()
                killed_at = time.monotonic()
                assert client.get(f"/v1/jobs/{job_id}").json()["status"] == JobStatus.RUNNING  # killed mid-job
                if kill + 1 < kills:
                    victim = start_worker_nowait(stack, **VICTIM)
                kinds = assert_succeeded_once(client, job_id)
                recoveries.append(round(time.monotonic() - killed_at, 1))
                job = client.get(f"/v1/jobs/{job_id}").json()
                assert job["attempt"] == 2 and kinds.count(EventKind.STARTED) == 2 and EventKind.REQUEUED in kinds
    finally:
        victim.stop()
    return recoveries


@pytest.fixture(scope="module")
def embedded_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded backend (SQLite job store and broker in DATA_DIR), the api started alone; tests add workers."""
    root = tmp_path_factory.mktemp("embedded-recovery")
    stack = Stack({"DATA_DIR": str(root / "data"), "QUEUE_NAME": "compress", **FAST}, root)
    stack.start_api("api")  # the embedded database is migrated by the first process that opens it
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def embedded_rescuer(embedded_backend: Stack) -> Iterator[ServiceProcess]:
    """One rescuer for the module's embedded tests (they never run a job on its queue at the same time)."""
    rescuer = start_rescuer(embedded_backend)
    yield rescuer
    rescuer.stop()


@pytest.fixture(scope="module")
def embedded_model(embedded_backend: Stack, digits_cnn) -> str:
    with embedded_backend.client() as client:
        return upload(client, "/v1/models", digits_cnn.path)["id"]


def test_sigkill_mid_job_embedded(
    embedded_backend: Stack, embedded_model: str, embedded_rescuer: ServiceProcess
) -> None:
    """Finding 1: on SQLite a killed worker's job stayed `running` forever."""
    recoveries = kill_workers_mid_job(embedded_backend, embedded_model, KILLS, embedded_rescuer)
    print(f"embedded: {len(recoveries)}/{KILLS} SIGKILLs recovered, seconds to success {recoveries}")


@pytest.mark.services
def test_sigkill_mid_job_production(production_backend: Stack, digits_cnn) -> None:
    with production_backend.client() as client:
        model_id = upload(client, "/v1/models", digits_cnn.path)["id"]
    rescuer = start_rescuer(production_backend)
    try:
        recoveries = kill_workers_mid_job(production_backend, model_id, KILLS, rescuer)
    finally:
        rescuer.stop()
    print(f"production: {len(recoveries)}/{KILLS} SIGKILLs recovered, seconds to success {recoveries}")


def test_job_committed_but_never_queued_runs(
    embedded_backend: Stack, embedded_model: str, embedded_rescuer: ServiceProcess
) -> None:
    """Finding 2: the API stopped between committing a job and publishing its message (here: the messages are
    purged from the broker after the commit; no worker consumes the API's queue); the rescuer's sweep queues
    them again (on its own queue) and they run."""
    settings = Settings(data_dir=Path(embedded_backend.env["DATA_DIR"]), queue_name=embedded_backend.env["QUEUE_NAME"])
    with embedded_backend.client() as client:
        job_ids = [submit_job(client, embedded_model) for _ in range(2)]
        with broker_connection(settings) as connection:
            assert connection.default_channel.queue_purge(settings.queue_name) == 2
        embedded_rescuer.wait_worker_ready(timeout=READY_TIMEOUT_S)
        for kinds in assert_all_succeeded_once(client, job_ids).values():
            assert EventKind.REQUEUED in kinds


class PrivateRedis:
    """A redis-server of the test's own (no persistence), so the machine's Redis is never disturbed."""

    def __init__(self, root: Path) -> None:
        self.port, self.root = free_port(), root
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(self.root)]
        log = (self.root / "redis.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._answers, 30, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def shutdown_nosave(self) -> None:
        with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
            self.client().shutdown(nosave=True)
        assert self.process is not None
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.services
def test_redis_restart_loses_no_queued_job(private_redis: PrivateRedis, tmp_path: Path, digits_cnn) -> None:
    """Finding 2: 20 queued jobs, Redis SHUTDOWN NOSAVE and back, fresh workers: all 20 complete once.
    Jobs submitted while Redis is down are accepted (202, never 500), kept queued in the job store (an outbox) and
    published by the workers' sweep once Redis answers again: they complete once too. /readyz says 503 meanwhile."""
    schema = postgres_schema()
    stack = Stack(production_env(tmp_path / "data", schema, **FAST), tmp_path)
    stack.env["BROKER_URL"] = private_redis.url
    try:
        stack.migrate()
        stack.start_api("api")
        with stack.client() as client:
            model_id = upload(client, "/v1/models", digits_cnn.path)["id"]
            queued = [submit_job(client, model_id) for _ in range(20)]
            assert private_redis.client().llen(stack.env["QUEUE_NAME"]) == 20

            private_redis.shutdown_nosave()
            # fresh workers boot during the outage (they wait for the broker), as they would after a host restart
            started = time.monotonic()
            workers = [start_worker_nowait(stack, **RESCUER) for _ in range(2)]
            try:
                during, submit_seconds = [], []
                for _ in range(5):
                    submitted_at = time.monotonic()
                    response = client.post("/v1/jobs", json={"model_id": model_id, **JOB})
                    submit_seconds.append(round(time.monotonic() - submitted_at, 1))
                    assert response.status_code == 202, response.text
                    assert response.json()["status"] == JobStatus.QUEUED
                    during.append(response.json()["id"])
                assert client.get("/readyz").status_code == 503
                for job_id in [queued[0], *during]:
                    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == JobStatus.QUEUED
                assert any("broker did not answer" in event["message"] for event in events(client, during[0]))
                assert not any(" ready." in worker.log() for worker in workers)  # none reached the broker

                private_redis.start()  # back, empty
                after = submit_job(client, model_id)  # the API publishes again without a restart
                for worker in workers:
                    worker.wait_worker_ready(timeout=READY_TIMEOUT_S)
                kinds = assert_all_succeeded_once(client, [*queued, *during, after], timeout=300)
                elapsed = time.monotonic() - started
            finally:
                for worker in workers:
                    worker.stop()
            assert all(EventKind.REQUEUED in kinds[job_id] for job_id in [*queued, *during])
            failed = client.get("/v1/jobs", params={"status": "failed", "limit": 100}).json()["items"]
        assert failed == []
        print(
            f"redis restart: {len(queued)}/20 queued jobs and {len(during)}/5 submitted while Redis was down "
            f"succeeded once, {elapsed:.0f} s after the workers started (during the outage); submissions while down took "
            f"{submit_seconds} s each"
        )
    finally:
        stack.stop()
        drop_postgres_schema(schema)
