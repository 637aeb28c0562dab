"""Real service processes for tests: `onnx-compress serve|api|worker` started as users start them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def postgres_schema() -> str:
    """A fresh schema per test run, so parallel runs on one server never see each other's jobs."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return schema


def drop_postgres_schema(schema: str) -> None:
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies left out) of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def kill_group(pgid: int, timeout: float = 10) -> None:
    """SIGKILL every process left in the group until none is alive."""
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"process group {pgid} survives SIGKILL: {group_members(pgid)}")
        time.sleep(0.05)


STARTED: list[ServiceProcess] = []  # every service process tests started, for the leftover checks


def leftover_groups() -> dict[int, list[int]]:
    """Process groups of started services that still have live members: {group: pids}."""
    groups = {process.process.pid for process in STARTED if process.process is not None and not process.group_gone}
    return {pgid: members for pgid in sorted(groups) if (members := group_members(pgid))}


def kill_all_started() -> None:
    """SIGKILL every started service's group that may still have members (end of session, or pytest stopped)."""
    for process in STARTED:
        if process.process is not None and not process.group_gone:
            with contextlib.suppress(RuntimeError):
                kill_group(process.process.pid)
            process.group_gone = True


@contextlib.contextmanager
def services_die_with_pytest() -> Iterator[None]:
    """While active, a SIGTERM to pytest (`timeout`, CI cancel) first kills every started service group (they run
    in sessions of their own, so the signal never reaches them), then ends pytest as SIGTERM would; at the end,
    any group still alive is killed too."""

    def on_sigterm(signum: int, frame: object) -> None:
        kill_all_started()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        kill_all_started()


def production_env(data_dir: Path, schema: str, **extra: str) -> dict[str, str]:
    user_host_db = POSTGRES_DSN.removeprefix("postgresql://")
    return {
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": f"postgresql+psycopg://{user_host_db}?options=-csearch_path%3D{schema}",
        "BROKER_URL": REDIS_URL,
        "QUEUE_NAME": f"q_{schema}",
        **extra,
    }


@dataclass
class ServiceProcess:
    command: str
    env: dict[str, str]
    log_path: Path
    port: int | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    group_gone: bool = field(default=False, repr=False)

    def start(self) -> ServiceProcess:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, "-m", "onnx_compress", self.command]
        if self.port is not None:
            args += ["--port", str(self.port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # its own process group (and session), so a kill takes the Celery pool children and `serve`'s worker with it
        self.process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        STARTED.append(self)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_http_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            self._check_alive()
            try:
                return httpx.get(f"{self.url}/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        self._wait_or_stop(ready, timeout, f"{self.command} on port {self.port}")

    def wait_worker_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            self._check_alive()
            return " ready." in self.log()

        self._wait_or_stop(ready, timeout, f"celery worker ({self.log_path})")

    def _wait_or_stop(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """A process that never gets ready is stopped before the error is raised: no test leaves it behind."""
        try:
            wait_until(ready, timeout, what)
        except BaseException:
            self.kill()
            raise

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.command} exited with {self.process.returncode}:\n{self.log()[-4000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group, wait for its leader, then SIGKILL whatever is left in the group (pool
        children, `serve`'s worker), even when the leader had already exited: no process outlives this call."""
        if self.process is None or self.group_gone:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        kill_group(self.process.pid)
        self.group_gone = True  # its id may be reused by a later group: never signalled again

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
