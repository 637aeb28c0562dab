"""Uploading a large valid model: the API process's memory and the upload throughput on loopback.

Starts `onnx-compress api` (embedded settings, a fresh data dir) in a process of its own, builds a valid model of
the given size (float32 initializers in 64 MiB pieces, an Add chain), uploads it with curl (multipart, as users
do) and prints, per size: the answer, wall time, MB/s and the API process's peak RSS growth (its high-water mark
reset through /proc/<pid>/clear_refs before the upload, VmHWM after, minus VmRSS before). Model validation runs
in a child process with its own memory limit, so the API's growth should not follow the model's size. The API
process's CPU seconds for the upload (and MB per CPU second) say what it would sustain on an idle machine: on a
loaded one the wall-clock MB/s mostly measures the wait for a core.

    .venv/bin/python bench/upload_memory.py [--sizes-mib 256,1024] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import onnx
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
PIECE_BYTES = 64 * MiB
COLUMNS = 1024


def build_model(path: Path, total_bytes: int) -> Path:
    """A valid model holding `total_bytes` of float32 initializers: y = x + w0 + w1 + ... (x broadcast)."""
    pieces = max(1, total_bytes // PIECE_BYTES)
    rows = PIECE_BYTES // (4 * COLUMNS)
    inits, nodes, current = [], [], "x"
    for index in range(pieces):
        tensor = onnx.TensorProto(name=f"w{index}", data_type=TensorProto.FLOAT, dims=[rows, COLUMNS])
        tensor.raw_data = bytes(PIECE_BYTES)
        inits.append(tensor)
        out = "y" if index == pieces - 1 else f"t{index}"
        nodes.append(helper.make_node("Add", [current, f"w{index}"], [out], name=f"add{index}"))
        current = out
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [COLUMNS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, COLUMNS])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: write 5 to clear_refs); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_api(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", "MAX_MODEL_BYTES": str(2048 * MiB)}
    log = log_path.open("ab")
    args = [sys.executable, "-m", "onnx_compress", "api", "--port", str(port)]
    process = subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"api exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise TimeoutError("api did not start")


def upload(url: str, path: Path) -> tuple[int, float]:
    started = time.perf_counter()
    result = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-F", f"file=@{path}", f"{url}/v1/models"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(result.stdout), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="256,1024", help="model sizes to upload (MiB, comma-separated)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes_mib.split(",") if s]
    with tempfile.TemporaryDirectory(prefix="upload-bench-") as tmp:
        root = Path(tmp)
        process, url = start_api(root / "data", root / "api.log")
        try:
            upload(url, build_model(root / "warm.onnx", PIECE_BYTES))  # first upload starts the validator
            print(f"load before: {Path('/proc/loadavg').read_text().strip()}  cores: {os.cpu_count()}")
            print(
                f"{'size MiB':>9} {'status':>6} {'seconds':>8} {'MB/s':>7} {'API CPU s':>9} {'MB/API CPU s':>12} "
                f"{'RSS before MiB':>15} {'peak growth MiB':>16}"
            )
            for size in sizes:
                model = build_model(root / f"m{size}.onnx", size * MiB)
                file_bytes = model.stat().st_size
                for _ in range(args.repeats):
                    exact = reset_peak(process.pid)
                    before = status_kib(process.pid, "VmRSS")
                    cpu = cpu_seconds(process.pid)
                    code, seconds = upload(url, model)
                    cpu = cpu_seconds(process.pid) - cpu
                    peak = status_kib(process.pid, "VmHWM")
                    growth = (peak - before) / 1024
                    note = "" if exact else " (VmHWM since start)"
                    print(
                        f"{size:>9} {code:>6} {seconds:>8.2f} {file_bytes / 1e6 / seconds:>7.0f} {cpu:>9.2f} "
                        f"{file_bytes / 1e6 / max(cpu, 1e-3):>12.0f} "
                        f"{before / 1024:>15.0f} {growth:>16.0f}{note}"
                    )
                model.unlink()
            print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
