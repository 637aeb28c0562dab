"""Issue 11 finding 10: uploading a large valid model does not grow the API process by the model's size.

A real `onnx-compress api` process takes a 384 MiB model (float32 initializers built here); its peak RSS
(VmHWM, reset through /proc/<pid>/clear_refs before the upload when the kernel allows it) grows by far less than
the model: the upload is streamed to disk and hashed on the way, and validation runs in a child process. The
figures for 1 GiB (MB/s, RSS growth) come from bench/upload_memory.py. Also: the validator's own limits hold
(a model it cannot validate within MODEL_VALIDATION_MEMORY_BYTES or MODEL_VALIDATION_SECONDS is a 422 saying
which setting), and the skeleton reader judges models exactly as onnx.checker does on the whole file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.model_validation import check_model, validate_isolated
from tests.service.stack import ServiceProcess, free_port

MiB = 1024 * 1024
MODEL_MIB = 384
PIECE = 64 * MiB
RSS_GROWTH_BOUND_MIB = 128


def large_model(path: Path, total_bytes: int) -> Path:
    """y = x + w0 + ... + wk with float32 [rows, 1024] initializers of 64 MiB each (x broadcast)."""
    rows = PIECE // 4096
    inits, nodes, current = [], [], "x"
    pieces = total_bytes // PIECE
    for index in range(pieces):
        tensor = onnx.TensorProto(name=f"w{index}", data_type=TensorProto.FLOAT, dims=[rows, 1024])
        tensor.raw_data = np.full(rows * 1024, index, np.float32).tobytes()
        inits.append(tensor)
        out = "y" if index == pieces - 1 else f"t{index}"
        nodes.append(helper.make_node("Add", [current, f"w{index}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 1024])],
        initializer=inits,
    )
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    return path


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak(pid: int) -> None:
    # VmHWM := VmRSS; when refused, VmHWM is the peak since start: the bound below still holds, less tightly
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("upload-memory")
    env = {"DATA_DIR": str(root / "data"), "MAX_MODEL_BYTES": str(1024 * MiB)}
    process = ServiceProcess("api", env, root / "api.log", port=free_port()).start()
    process.wait_http_ready()
    yield process
    process.stop()


def _upload(url: str, path: Path) -> httpx.Response:
    with path.open("rb") as handle:
        return httpx.post(f"{url}/v1/models", files={"file": (path.name, handle)}, timeout=300)


@pytest.mark.slow
def test_large_upload_does_not_grow_the_api(api: ServiceProcess, tmp_path: Path) -> None:
    small = tmp_path / "small.onnx"
    small.write_bytes(large_model(tmp_path / "warm.onnx", PIECE).read_bytes())
    assert _upload(api.url, small).status_code == 201  # the first upload starts the validator's fork server
    model = large_model(tmp_path / "large.onnx", MODEL_MIB * MiB)
    assert api.process is not None
    pid = api.process.pid
    _reset_peak(pid)
    before = _status_kib(pid, "VmRSS")
    started = time.monotonic()
    response = _upload(api.url, model)
    seconds = time.monotonic() - started
    growth_mib = (_status_kib(pid, "VmHWM") - before) / 1024
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["size_bytes"] == model.stat().st_size
    assert body["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert body["op_counts"] == {"Add": MODEL_MIB * MiB // PIECE}
    assert body["inputs"] == [{"name": "x", "shape": [1024], "dtype": "float32"}]
    print(f"{MODEL_MIB} MiB upload: {seconds:.1f} s, API peak RSS growth {growth_mib:.0f} MiB")
    assert growth_mib <= RSS_GROWTH_BOUND_MIB, f"API RSS grew {growth_mib:.0f} MiB for a {MODEL_MIB} MiB model"
    stored = httpx.get(f"{api.url}/v1/models/{body['id']}", timeout=30).json()
    assert stored["sha256"] == body["sha256"]


def _tensor_model(tensor: onnx.TensorProto, extra_nodes: list[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", tensor.name], ["y"]), *(extra_nodes or [])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[tensor],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _checker_verdict(path: Path) -> bool:
    try:
        onnx.checker.check_model(str(path))
        return True
    except Exception:  # noqa: BLE001
        return False


def _our_verdict(path: Path) -> bool:
    try:
        check_model(path, 1 << 30)
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.mark.parametrize(
    "case",
    ["float", "int4_odd", "scalar", "short_raw", "long_raw", "string_raw", "float_data", "empty"],
)
def test_skeleton_judges_initializers_as_the_checker_does(tmp_path: Path, case: str) -> None:
    values = np.arange(4, dtype=np.float32)
    tensor = numpy_helper.from_array(values, "w")
    if case == "int4_odd":
        tensor = onnx.TensorProto(name="w", data_type=TensorProto.INT4, dims=[3], raw_data=b"\x12\x03")
    elif case == "scalar":
        tensor = numpy_helper.from_array(np.array(2.0, np.float32), "w")
    elif case == "short_raw":
        tensor.raw_data = tensor.raw_data[:-1]
    elif case == "long_raw":
        tensor.raw_data += b"\0" * 4
    elif case == "string_raw":
        tensor = onnx.TensorProto(name="w", data_type=TensorProto.STRING, dims=[1], raw_data=b"abcd")
    elif case == "float_data":
        tensor = helper.make_tensor("w", TensorProto.FLOAT, [4], values.tolist())
    elif case == "empty":
        tensor = numpy_helper.from_array(np.zeros((0, 4), np.float32), "w")
    path = tmp_path / "m.onnx"
    path.write_bytes(_tensor_model(tensor).SerializeToString())
    assert _our_verdict(path) == _checker_verdict(path), case


def test_validator_limits_are_422_reasons(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(_tensor_model(numpy_helper.from_array(np.zeros(4, np.float32), "w")).SerializeToString())
    info = validate_isolated(path, max_input_sample_bytes=1 << 30, memory_bytes=2048 * MiB, seconds=60)
    assert [spec.name for spec in info.inputs] == ["x"]
    # a wrong-length initializer is parsed whole in the child: 8 MiB of float_data under a tiny address space
    big = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3])
    big.float_data.extend(np.zeros(2 * MiB, np.float32).tolist())
    path.write_bytes(_tensor_model(big).SerializeToString())
    with pytest.raises(Exception) as refused:
        validate_isolated(path, max_input_sample_bytes=1 << 30, memory_bytes=64 * MiB, seconds=60)
    assert "MODEL_VALIDATION_MEMORY_BYTES" in str(refused.value)
    with pytest.raises(Exception) as slow:
        validate_isolated(path, max_input_sample_bytes=1 << 30, memory_bytes=2048 * MiB, seconds=0.001)
    assert "MODEL_VALIDATION_SECONDS" in str(slow.value)


def test_an_unguarded_main_script_is_not_run_again_by_validation(tmp_path: Path) -> None:
    """A script without `if __name__ == "__main__":` that validates uploads: its children never re-run it."""
    model = tmp_path / "m.onnx"
    model.write_bytes(_tensor_model(numpy_helper.from_array(np.zeros(4, np.float32), "w")).SerializeToString())
    script = tmp_path / "embed.py"
    script.write_text(
        "from pathlib import Path\n"
        "from service.model_validation import validate_isolated\n"
        "print('script ran', flush=True)\n"
        f"info = validate_isolated(Path({str(model)!r}), 1 << 30, 2048 * 1024 * 1024, 60)\n"
        "print('inputs', [spec.name for spec in info.inputs], flush=True)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("script ran") == 1, result.stdout
    assert "inputs ['x']" in result.stdout
