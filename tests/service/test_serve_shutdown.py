"""`onnx-compress serve` stopped with SIGTERM (docker stop, systemd, kill) takes its worker down with it.

uvicorn re-raises the SIGTERM it shut down on; with the default action the serve process ended before it could
stop the worker it started, which then ran on without an API (found after a fuzzing run left two workers behind).
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.service.stack import ServiceProcess, free_port, group_members, kill_group, wait_until

pytestmark = pytest.mark.slow  # a real serve (api and worker processes)


def test_sigterm_to_serve_stops_its_worker(tmp_path) -> None:
    serve = ServiceProcess("serve", {"DATA_DIR": str(tmp_path / "data")}, tmp_path / "serve.log", port=free_port())
    serve.start()
    try:
        serve.wait_http_ready()
        assert serve.process is not None
        pgid = serve.process.pid
        wait_until(lambda: len(group_members(pgid)) >= 2, 120, "serve's worker to start")
        os.kill(serve.process.pid, signal.SIGTERM)  # the serve process only, as a supervisor would
        serve.process.wait(timeout=60)
        wait_until(lambda: not group_members(pgid), 60, "the worker to stop after serve ended")
    finally:
        if serve.process is not None:
            kill_group(serve.process.pid)
            serve.group_gone = True
