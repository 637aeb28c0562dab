"""Jobs survive crashes, against real processes: a worker SIGKILLed mid-job (embedded: SQLite job store and broker;
production: PostgreSQL + Redis), a job committed whose message never reached the broker, and Redis restarted
without persistence with 20 jobs queued. Every job ends `succeeded` exactly once.

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
    postgres_schema,
    production_env,
    wait_until,
)

pytestmark = pytest.mark.slow  # real api and worker processes

KILLS = int(os.environ.get("RECOVERY_KILLS", "1"))
LEASE = {"JOB_LEASE_SECONDS": "4", "JOB_HEARTBEAT_SECONDS": "1"}
# the victim's job times latency for minutes (never narrow enough to stop early), so it is killed mid-run
VICTIM = {
    **LEASE,
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


def event_kinds(client: httpx.Client, job_id: str) -> list[str]:
    return [event["kind"] for event in client.get(f"/v1/jobs/{job_id}/events").json()]


def assert_succeeded_once(client: httpx.Client, job_id: str, timeout: float = 120) -> list[str]:
    """The job ends succeeded, stays so, and has exactly one `succeeded` event; returns its event kinds."""
    done = poll(client, job_id, timeout=timeout)
    assert done["status"] == JobStatus.SUCCEEDED, done
    time.sleep(2)  # a duplicate delivery would have run by now
    final = client.get(f"/v1/jobs/{job_id}").json()
    kinds = event_kinds(client, job_id)
    assert final["status"] == JobStatus.SUCCEEDED and final["finished_at"] == done["finished_at"]
    assert kinds.count(EventKind.SUCCEEDED) == 1, kinds
    assert client.get(f"/v1/jobs/{job_id}/artifacts/model.onnx").status_code == 200
    return kinds


def start_worker_nowait(stack: Stack, **env: str) -> ServiceProcess:
    worker = ServiceProcess("worker", {**stack.env, **env}, stack.root / f"worker{len(stack.processes)}.log")
    stack.processes.append(worker.start())
    return worker


def kill_workers_mid_job(stack: Stack, model_id: str, kills: int) -> list[float]:
    """SIGKILL a worker (its whole process group) mid-job, `kills` times; each job must end succeeded once.

    The rescuer runs all along on a queue of its own: its sweep requeues a dead worker's job there, so fresh
    submissions reach only the victim, and the next victim boots while the rescuer finishes the job.
    Returns the seconds from each kill to the job's success."""
    rescuer = start_worker_nowait(stack, **RESCUER, QUEUE_NAME=f"{stack.env['QUEUE_NAME']}-rescue")
    victim = start_worker_nowait(stack, **VICTIM)
    rescuer.wait_worker_ready(timeout=READY_TIMEOUT_S)
    recoveries = []
    try:
        with stack.client() as client:
            for _ in range(kills):
                victim.wait_worker_ready(timeout=READY_TIMEOUT_S)
                job_id = submit_job(client, model_id)
                poll(client, job_id, timeout=120, until={JobStatus.RUNNING})
                time.sleep(1.0)
                victim.kill()
                killed_at = time.monotonic()
                assert client.get(f"/v1/jobs/{job_id}").json()["status"] == JobStatus.RUNNING  # killed mid-job
                victim = start_worker_nowait(stack, **VICTIM)
                kinds = assert_succeeded_once(client, job_id)
                recoveries.append(round(time.monotonic() - killed_at, 1))
                job = client.get(f"/v1/jobs/{job_id}").json()
                assert job["attempt"] == 2 and kinds.count(EventKind.STARTED) == 2 and EventKind.REQUEUED in kinds
    finally:
        victim.stop()
        rescuer.stop()
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
def embedded_model(embedded_backend: Stack, digits_cnn) -> str:
    with embedded_backend.client() as client:
        return upload(client, "/v1/models", digits_cnn.path)["id"]


def test_sigkill_mid_job_embedded(embedded_backend: Stack, embedded_model: str) -> None:
    """Finding 1: on SQLite a killed worker's job stayed `running` forever."""
    recoveries = kill_workers_mid_job(embedded_backend, embedded_model, KILLS)
    print(f"embedded: {len(recoveries)}/{KILLS} SIGKILLs recovered, seconds to success {recoveries}")


@pytest.mark.services
def test_sigkill_mid_job_production(production_backend: Stack, digits_cnn) -> None:
    with production_backend.client() as client:
        model_id = upload(client, "/v1/models", digits_cnn.path)["id"]
    recoveries = kill_workers_mid_job(production_backend, model_id, KILLS)
    print(f"production: {len(recoveries)}/{KILLS} SIGKILLs recovered, seconds to success {recoveries}")


def test_job_committed_but_never_queued_runs(embedded_backend: Stack, embedded_model: str) -> None:
    """Finding 2: the API stopped between committing a job and publishing its message (here: the messages are
    purged from the broker after the commit); the workers' sweep queues them again."""
    settings = Settings(data_dir=Path(embedded_backend.env["DATA_DIR"]))
    with embedded_backend.client() as client:
        job_ids = [submit_job(client, embedded_model) for _ in range(2)]
        with broker_connection(settings) as connection:
            assert connection.default_channel.queue_purge(settings.queue_name) == 2
        worker = embedded_backend.start_worker(**RESCUER)
        try:
            for job_id in job_ids:
                kinds = assert_succeeded_once(client, job_id)
                assert EventKind.REQUEUED in kinds
        finally:
            worker.stop()


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
    """Finding 2: 20 queued jobs, Redis SHUTDOWN NOSAVE and back, fresh workers: all 20 complete once;
    while Redis is down the API answers 503 with Retry-After (never 500) to submissions."""
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
            statuses = []
            for _ in range(5):
                response = client.post("/v1/jobs", json={"model_id": model_id, **JOB})
                statuses.append(response.status_code)
                assert response.status_code == 503, response.text
                assert int(response.headers["Retry-After"]) > 0 and "retry later" in response.json()["detail"]
            assert client.get("/readyz").status_code == 503
            assert client.get(f"/v1/jobs/{queued[0]}").json()["status"] == JobStatus.QUEUED

            private_redis.start()  # back, empty
            assert private_redis.client().llen(stack.env["QUEUE_NAME"]) == 0
            after = submit_job(client, model_id)  # the API publishes again without a restart
            started = time.monotonic()
            workers = [start_worker_nowait(stack, **RESCUER) for _ in range(2)]
            try:
                for worker in workers:
                    worker.wait_worker_ready(timeout=READY_TIMEOUT_S)
                for job_id in [*queued, after]:
                    kinds = assert_succeeded_once(client, job_id, timeout=300)
                    if job_id != after:
                        assert EventKind.REQUEUED in kinds
                elapsed = time.monotonic() - started
            finally:
                for worker in workers:
                    worker.stop()
            failed = client.get("/v1/jobs", params={"status": "failed", "limit": 100}).json()["items"]
        print(
            f"redis restart: 20/20 queued jobs succeeded once, {elapsed:.0f} s after the workers started; "
            f"submissions while down: {statuses}"
        )
        assert len(failed) == 5 and {job["error"]["code"] for job in failed} == {"broker_unavailable"}
    finally:
        stack.stop()
        drop_postgres_schema(schema)
