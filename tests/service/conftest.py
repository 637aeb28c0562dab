"""Service stacks for tests: embedded (`serve`) and production (api + worker on PostgreSQL and Redis)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.stack import (
    ServiceProcess,
    drop_postgres_schema,
    free_port,
    kill_group,
    leftover_groups,
    postgres_schema,
    production_env,
    services_die_with_pytest,
)

FAST = {"LATENCY_RUNS": "10", "LATENCY_WARMUP": "2"}


class Stack:
    """Running service processes plus what a test needs to start more workers on the same backend."""

    def __init__(self, env: dict[str, str], root: Path) -> None:
        self.env, self.root = env, root
        self.processes: list[ServiceProcess] = []
        self.api: ServiceProcess | None = None

    def migrate(self) -> None:
        """`onnx-compress migrate`, as deployments run it before api and workers (DATABASE_URL given)."""
        env = {**os.environ, **self.env}
        result = subprocess.run([sys.executable, "-m", "onnx_compress", "migrate"], env=env, capture_output=True)
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-4000:]

    def start_api(self, command: str = "api") -> ServiceProcess:
        self.api = ServiceProcess(command, self.env, self.root / f"{command}.log", port=free_port()).start()
        self.processes.append(self.api)
        self.api.wait_http_ready()
        return self.api

    def start_worker(self, **extra_env: str) -> ServiceProcess:
        name = f"worker{len(self.processes)}"
        worker = ServiceProcess("worker", {**self.env, **extra_env}, self.root / f"{name}.log").start()
        self.processes.append(worker)
        worker.wait_worker_ready()
        return worker

    def client(self) -> httpx.Client:
        assert self.api is not None
        return httpx.Client(base_url=self.api.url, timeout=30)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture(scope="session", autouse=True)
def services_stop_with_the_session() -> Iterator[None]:
    """No service process outlives the test session, even one stopped by SIGTERM (e.g. `timeout`)."""
    with services_die_with_pytest():
        yield


@pytest.fixture(scope="module", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """After each module (its stacks stopped, or its test failed before stopping them): no service process it
    started is left running; any that is gets killed, with a warning naming it."""
    yield
    left = leftover_groups()
    for pgid in left:
        kill_group(pgid)
    if left:
        warnings.warn(f"service process groups left running after the module (killed now): {left}", stacklevel=1)


@pytest.fixture(scope="module")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("embedded")
    stack = Stack({"DATA_DIR": str(root / "data"), **FAST}, root)
    stack.start_api("serve")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def production_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL + Redis config with an api running; tests start and kill workers themselves."""
    root = tmp_path_factory.mktemp("production")
    schema = postgres_schema()
    stack = Stack(production_env(root / "data", schema, **FAST), root)
    stack.migrate()
    stack.start_api("api")
    yield stack
    stack.stop()
    drop_postgres_schema(schema)
