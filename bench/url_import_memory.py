"""Importing a large model by URL vs uploading it: the API process's memory and the wall time, side by side.

Starts `onnx-compress api` (embedded settings, OUTBOUND_ALLOWLIST=127.0.0.1 and OUTBOUND_ALLOW_HTTP so it may fetch
from this machine), serves the built models from a local HTTP server in this process, and per size and repeat
runs one multipart upload (curl, as users do) and one `POST /v1/models {"url": ...}` alternately, printing the
answer, wall time, the API process's CPU seconds and its peak RSS growth (high-water mark reset before each request; see
bench/upload_memory.py, whose helpers this reuses). The import streams to disk in 1 MiB chunks, so its growth
should not follow the model's size either.

    .venv/bin/python bench/url_import_memory.py [--sizes-mib 256,1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upload_memory import PIECE_BYTES, MiB, build_model, cpu_seconds, reset_peak, start_api, status_kib, upload  # noqa: E402


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def import_url(api: str, url: str) -> tuple[int, float]:
    started = time.perf_counter()
    response = httpx.post(f"{api}/v1/models", json={"url": url}, timeout=600)
    return response.status_code, time.perf_counter() - started


def measure(pid: int, action) -> tuple[int, float, float, float]:  # noqa: ANN001
    """The answer's status, wall seconds, the API's CPU seconds and its peak RSS growth (MiB) for one request."""
    reset_peak(pid)
    before, cpu = status_kib(pid, "VmRSS"), cpu_seconds(pid)
    code, seconds = action()
    return code, seconds, cpu_seconds(pid) - cpu, (status_kib(pid, "VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="256,1024", help="model sizes (MiB, comma-separated)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mib.split(",") if s]
    os.environ.update({"OUTBOUND_ALLOWLIST": "127.0.0.1", "OUTBOUND_ALLOW_HTTP": "true"})
    with tempfile.TemporaryDirectory(prefix="url-import-bench-") as tmp:
        root = Path(tmp)
        served = root / "served"
        served.mkdir()
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietFiles, directory=str(served)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        files = f"http://127.0.0.1:{server.server_address[1]}"
        process, api = start_api(root / "data", root / "api.log")
        try:
            upload(api, build_model(served / "warm.onnx", PIECE_BYTES))  # first upload starts the validator
            print(f"load before: {Path('/proc/loadavg').read_text().strip()}  cores: {os.cpu_count()}")
            print(f"{'size MiB':>9} {'how':>7} {'status':>6} {'seconds':>8} {'API CPU s':>9} {'peak growth MiB':>16}")
            for size in sizes:
                model = build_model(served / f"m{size}.onnx", size * MiB)
                for _ in range(args.repeats):
                    for how, action in (
                        ("upload", lambda m=model: upload(api, m)),
                        ("url", lambda m=model: import_url(api, f"{files}/{m.name}")),
                    ):
                        code, seconds, cpu, growth = measure(process.pid, action)
                        print(f"{size:>9} {how:>7} {code:>6} {seconds:>8.2f} {cpu:>9.2f} {growth:>16.0f}")
                model.unlink()
            print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
        finally:
            process.terminate()
            process.wait(timeout=30)
            server.shutdown()


if __name__ == "__main__":
    main()
