"""How cheap a status read is: requests/s of `GET /v1/jobs/{id}` against `GET /livez` on the same server.

Starts a real embedded server (`onnx-compress serve`: SQLite jobs and broker, one worker, as `make run` does), runs
one job to completion (the digits CNN, dynamic quantize with eval data: a job whose metrics are realistic), then
loads both routes alternately with a concurrent load generator (wrk when installed, else Python threads) and prints
the ratio per round, with the machine's load average. The ratio is what matters: both routes are measured side by
side in one run on the same server, so machine load moves them together.

    .venv/bin/python bench/status_reads.py [--seconds 5] [--rounds 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import model_zoo  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir: Path, port: int, log_path: Path, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "DATA_DIR": str(data_dir), "LATENCY_RUNS": "10", "LATENCY_WARMUP": "2", **extra_env}
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "onnx_compress", "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError("server did not start")


def stop_server(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=40)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def run_job(base: str, headers: dict[str, str]) -> str:
    digits = model_zoo.load("digits_cnn")
    buffer = io.BytesIO()
    np.savez(buffer, input=np.asarray(digits.x_test, dtype=np.float32), labels=digits.y_test)
    with httpx.Client(base_url=base, timeout=60, headers=headers) as client:
        model = client.post("/v1/models", files={"file": ("digits.onnx", digits.path.read_bytes())}).json()
        data = client.post("/v1/datasets", files={"file": ("eval.npz", buffer.getvalue())}).json()
        body = {
            "model_id": model["id"],
            "steps": [{"type": "quantize", "mode": "dynamic"}],
            "datasets": {"eval": data["id"]},
        }
        job = client.post("/v1/jobs", json=body).json()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job['id']}").json()
            if job["status"] in {"succeeded", "failed", "canceled"}:
                break
            time.sleep(0.5)
        if job["status"] != "succeeded":
            raise RuntimeError(f"the job did not succeed: {job}")
        return job["id"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_rate(url: str, seconds: float, connections: int, threads: int, headers: dict[str, str]) -> tuple[float, int]:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx or 3xx responses", out):
        raise RuntimeError(f"non-2xx answers from {url}:\n{out}")
    rate = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    return rate, int(re.search(r"(\d+) requests in", out).group(1))


def python_rate(
    url: str, seconds: float, connections: int, _threads: int, headers: dict[str, str]
) -> tuple[float, int]:
    """Fallback load generator: `connections` threads, each with a keep-alive client, for `seconds`."""
    counts = [0] * connections
    stop = time.monotonic() + seconds

    def load(index: int) -> None:
        with httpx.Client(timeout=10, headers=headers) as client:
            while time.monotonic() < stop:
                response = client.get(url)
                if response.status_code != 200:
                    raise RuntimeError(f"{url} answered {response.status_code}")
                counts[index] += 1

    workers = [threading.Thread(target=load, args=(i,)) for i in range(connections)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - started), sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=5, help="livez/job measurement pairs, alternated")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--python", action="store_true", help="use the Python load generator even if wrk exists")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="server setting")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.set)
    measure = python_rate if args.python or shutil.which("wrk") is None else wrk_rate
    generator = "python threads" if measure is python_rate else f"wrk -t{args.threads}"

    with tempfile.TemporaryDirectory(prefix="status-reads-") as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(Path(tmp) / "data", port, Path(tmp) / "serve.log", extra_env)
        try:
            job_id = run_job(base, {})
            body = httpx.get(f"{base}/v1/jobs/{job_id}").content
            load_before = os.getloadavg()
            rows = []
            for round_index in range(args.rounds):
                row = [round_index + 1]
                for url in (f"{base}/livez", f"{base}/v1/jobs/{job_id}"):
                    cpu = cpu_seconds(server.pid)
                    rate, count = measure(url, args.seconds, args.connections, args.threads, {})
                    row += [rate, (cpu_seconds(server.pid) - cpu) / count * 1e6]
                rows.append((*row, os.getloadavg()[0]))
            load_after = os.getloadavg()
        finally:
            stop_server(server)

    print(f"\nstatus reads vs /livez: {generator}, {args.connections} connections, {args.seconds:g} s per measurement")
    print(f"server: onnx-compress serve (embedded SQLite), a succeeded job, GET /v1/jobs/{{id}} = {len(body)} bytes")
    print(
        f"cpus: {os.cpu_count()}; load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    print()
    print("req/s ratio: job / livez throughput; cpu ratio: livez / job server CPU per request (what the ratio of")
    print("throughputs tends to on an idle machine, where the server is the bottleneck; it is less sensitive to load).")
    print()
    print(
        "| round | /livez req/s | /livez CPU us/req | /v1/jobs/{id} req/s | job CPU us/req | req/s ratio | cpu ratio | load |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for number, livez, livez_cpu, job, job_cpu, load in rows:
        print(
            f"| {number} | {livez:,.0f} | {livez_cpu:,.0f} | {job:,.0f} | {job_cpu:,.0f} | {job / livez:.2f} | "
            f"{livez_cpu / job_cpu:.2f} | {load:.2f} |"
        )
    med = [statistics.median(row[i] for row in rows) for i in range(1, 5)]
    rate_ratio = statistics.median(row[3] / row[1] for row in rows)
    cpu_ratio = statistics.median(row[2] / row[4] for row in rows)
    print(
        f"| median | {med[0]:,.0f} | {med[1]:,.0f} | {med[2]:,.0f} | {med[3]:,.0f} | {rate_ratio:.2f} | "
        f"{cpu_ratio:.2f} | |"
    )
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
    main()
