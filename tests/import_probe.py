"""Import each named module on its own: `python -m tests.import_probe MODULE...` prints one JSON line per module.

One fresh interpreter preloads the heavy third-party libraries (never a module of this repository), then forks
a child per module, so every module is imported with no other module of the repository loaded, the way a
process that starts with it would, at a fraction of the cost of a cold interpreter per module.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback

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


def import_alone(module: str) -> str | None:
    """Fork, import `module` in the child, return its traceback (None when the import worked)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
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
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        report = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        signal_name = signal.Signals(os.WTERMSIG(status)).name
        return f"import killed by {signal_name}" + (f" (over {TIMEOUT_S} s)" if signal_name == "SIGALRM" else "")
    return report or None


def main(modules: list[str]) -> None:
    preload()
    for module in modules:
        print(json.dumps({"module": module, "error": import_alone(module)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
