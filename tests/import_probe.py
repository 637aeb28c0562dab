"""Import each named module on its own: `python -m tests.import_probe [--jobs N] MODULE...` prints one JSON line
per module: {"module": ..., "error": traceback or null}.

One fresh interpreter preloads the heavy third-party libraries (never a module of this repository), then forks
one child per module, N at a time, so every module is imported with no other module of the repository loaded,
the way a process that starts with it would, at a fraction of the cost of a cold interpreter per module.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import selectors
import signal
import sys
import traceback
from dataclasses import dataclass, field

PROJECT = ("compression", "app", "workers", "service", "onnx_compress", "model_zoo")
PRELOAD = (
    "numpy",
    "onnx",
    "onnx_ir",
    "onnxruntime",
    "onnxruntime.quantization",
    "torch",
    "pydantic",
    "pydantic_settings",
    "sqlalchemy",
    "sqlalchemy.orm",
    "fastapi",
    "celery",
    "kombu",
    "typer",
    "rich",
    "httpx",
)
TIMEOUT_S = 120


def project_modules_loaded() -> list[str]:
    return sorted(name for name in sys.modules if name.split(".")[0] in PROJECT)


def preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    loaded = project_modules_loaded()
    if loaded:
        raise RuntimeError(f"preloading third-party libraries imported modules of this repository: {loaded}")


def _child(module: str, write_fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    signal.alarm(TIMEOUT_S)
    try:
        importlib.import_module(module)
        report = ""
    except BaseException:
        report = traceback.format_exc()
    with os.fdopen(write_fd, "w") as pipe:
        pipe.write(report)
    os._exit(0)


@dataclass
class Running:
    module: str
    pid: int
    chunks: list[bytes] = field(default_factory=list)


def _start(module: str) -> tuple[int, Running]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(module, write_fd)
    os.close(write_fd)
    return read_fd, Running(module, pid)


def _outcome(child: Running) -> str | None:
    _, status = os.waitpid(child.pid, 0)
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"import killed by {name}" + (f" (over {TIMEOUT_S} s)" if name == "SIGALRM" else "")
    return b"".join(child.chunks).decode(errors="replace") or None


def import_each(modules: list[str], jobs: int) -> None:
    """Fork a child per module, `jobs` at a time; print each child's report as it finishes."""
    pending = list(reversed(modules))
    selector = selectors.DefaultSelector()
    while pending or selector.get_map():
        while pending and len(selector.get_map()) < jobs:
            read_fd, child = _start(pending.pop())
            selector.register(read_fd, selectors.EVENT_READ, child)
        for key, _ in selector.select():
            child: Running = key.data
            chunk = os.read(key.fd, 65536)
            if chunk:
                child.chunks.append(chunk)
                continue
            selector.unregister(key.fd)
            os.close(key.fd)
            print(json.dumps({"module": child.module, "error": _outcome(child)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1, help="children importing at the same time")
    parser.add_argument("modules", nargs="+")
    args = parser.parse_args()
    preload()
    import_each(args.modules, args.jobs)


if __name__ == "__main__":
    main()
