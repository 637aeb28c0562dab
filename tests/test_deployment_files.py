"""The compose stack and images run the commands the tests run, with settings the service knows."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from onnx_compress.cli import cli
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
AWS_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def cli_commands() -> set[str]:
    return {command.name or command.callback.__name__ for command in cli.registered_commands}


def test_compose_has_the_production_stack() -> None:
    services = compose()["services"]
    assert {"api", "worker", "postgres", "redis", "minio"} <= services.keys()
    for name in ("api", "worker"):
        assert services[name]["build"]["target"] == name
        assert {"postgres", "redis"} <= services[name]["depends_on"].keys()


def test_compose_has_flower_on_the_workers_broker() -> None:
    services = compose()["services"]
    flower = services["flower"]
    assert flower["build"]["target"] == "flower"
    assert "redis" in flower["depends_on"]
    assert flower["environment"]["BROKER_URL"] == services["worker"]["environment"]["BROKER_URL"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"]  # not open by default
    assert any(port.endswith(":5555") for port in flower["ports"])


def test_workers_send_task_events_for_flower() -> None:
    from workers.celery_app import make_celery

    conf = make_celery(Settings()).conf
    assert conf.worker_send_task_events and conf.task_send_sent_event


def test_service_environment_names_real_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name in ("api", "worker"):
        env = compose()["services"][name]["environment"]
        unknown = set(env) - fields - AWS_ENV
        assert not unknown, f"{name} sets variables the service does not read: {unknown}"
        assert env["DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["BROKER_URL"].startswith("redis://")
        assert env["ARTIFACT_STORE"] == "s3"


def test_dockerfile_targets_run_cli_commands() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    targets = re.findall(r"^FROM \S+ AS (\w+)", text, flags=re.MULTILINE)
    assert {"api", "worker"} <= set(targets)
    cmds = re.findall(r"^CMD \[.*\]", text, flags=re.MULTILINE)
    commands = [cmd.split('"')[3] for cmd in cmds if cmd.startswith('CMD ["onnx-compress"')]
    assert commands == ["api", "worker"]
    assert set(commands) <= cli_commands()
    assert "flower" in targets and 'CMD ["celery", "--app", "workers.celery_app", "flower"' in text
    for package in ("compression", "service", "app", "workers", "onnx_compress"):
        assert f"COPY {package} ./{package}" in text


def test_visibility_timeout_above_hard_limit_by_default() -> None:
    settings = Settings()
    assert settings.broker_visibility_timeout > settings.job_hard_time_limit > settings.job_soft_time_limit


def test_misordered_limits_are_refused() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="JOB_HARD_TIME_LIMIT < BROKER_VISIBILITY_TIMEOUT"):
        Settings(job_hard_time_limit=5000, broker_visibility_timeout=4000)
