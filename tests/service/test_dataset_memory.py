"""Issue 11 finding 4 (remainder): a worker's memory follows the engine's settings, not the size of the data.

Datasets are memory-mapped in the worker (compression/datasets.py: stored .npz members in place, compressed ones
unpacked to the job's directory in chunks, dtype casts written there in chunks), and the engine takes only its
settings' sample counts. The same job (dynamic quantize with an eval dataset) runs with the worker's own
`run_job` in a process of its own, once on 2,000 samples and once on 1 M samples (256 MiB of inputs): its peak
RSS (ru_maxrss from wait4) may grow by far less than the data.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from app.main import create_app
from compression.datasets import Dataset, DatasetBundle, open_npz
from compression.errors import DatasetMismatchError
from compression.model_info import TensorSpec
from service.settings import Settings

MiB = 1024 * 1024
LARGE_SAMPLES = 1_048_576  # x 256 bytes per [1, 8, 8] float32 sample = 256 MiB
SMALL_SAMPLES = 2_000
GROWTH_BOUND_MIB = 128
FAST = {"LATENCY_RUNS": "5", "LATENCY_WARMUP": "1"}


def _write_npz(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((n, 1, 8, 8), dtype=np.float32)
    np.savez(path, input=inputs, labels=rng.integers(0, 10, n))
    return path


def _run_job_peak_mib(job_id: str, env: dict[str, str], limit_bytes: int | None = None) -> tuple[str, float]:
    """run_job in a fresh process (under an address-space limit if given): (its outcome, its peak RSS in MiB:
    VmHWM, which, unlike ru_maxrss, does not include the parent's peak from before exec)."""
    code = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit_bytes}, {limit_bytes})); "
    code = code if limit_bytes else ""
    code += "import sys; from service.settings import Settings; from workers.job_runner import run_job; "
    code += "outcome = run_job(sys.argv[1], Settings()).value; "
    code += "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]; "
    code += "print(outcome, hwm)"
    result = subprocess.run(
        [sys.executable, "-c", code, job_id],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome, hwm_kib = result.stdout.strip().splitlines()[-1].split()
    return outcome, int(hwm_kib) / 1024


@pytest.mark.slow
def test_worker_memory_follows_settings_not_data(tmp_path: Path, digits_cnn) -> None:
    env = {"DATA_DIR": str(tmp_path / "data"), **FAST}
    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/models", files={"file": ("d.onnx", digits_cnn.path.read_bytes())})
        assert response.status_code == 201, response.text
        model_id = response.json()["id"]
        jobs = {}
        for name, n in (("small", SMALL_SAMPLES), ("large", LARGE_SAMPLES)):
            path = _write_npz(tmp_path / f"{name}.npz", n, seed=n)
            with path.open("rb") as handle:
                response = client.post("/v1/datasets", files={"file": (path.name, handle)})
            assert response.status_code == 201, response.text
            path.unlink()
            body = {
                "model_id": model_id,
                "steps": [{"type": "quantize", "mode": "dynamic"}],
                "datasets": {"eval": response.json()["id"]},
            }
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            jobs[name] = response.json()["id"]
        peaks = {}
        for name, job_id in jobs.items():
            outcome, peaks[name] = _run_job_peak_mib(job_id, env)
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert outcome == "succeeded" and job["status"] == "succeeded", job
            assert job["metrics"]["fidelity"]["accuracy"] is not None
    growth = peaks["large"] - peaks["small"]
    data_mib = LARGE_SAMPLES * 256 / MiB
    print(f"worker peak RSS: {peaks['small']:.0f} MiB (2k samples), {peaks['large']:.0f} MiB ({data_mib:.0f} MiB data)")
    assert growth <= GROWTH_BOUND_MIB, f"peak RSS grew {growth:.0f} MiB with {data_mib:.0f} MiB of data"


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed], ids=["stored", "compressed"])
def test_memory_mapped_arrays_equal_loaded_ones(tmp_path: Path, save) -> None:
    rng = np.random.default_rng(3)
    arrays = {
        "input": rng.standard_normal((50, 1, 8, 8)),  # float64: cast to the input's float32 in scratch
        "fortran": np.asfortranarray(rng.standard_normal((50, 3))),
        "labels": rng.integers(0, 10, 50),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.array(2.5),
    }
    buffer = io.BytesIO()
    save(buffer, **arrays)
    path = tmp_path / "d.npz"
    path.write_bytes(buffer.getvalue())
    mapped = open_npz(path, tmp_path / "scratch")
    for name, array in arrays.items():
        assert mapped[name].dtype == array.dtype and mapped[name].shape == array.shape, name
        assert np.array_equal(mapped[name], array), name
    bind = tmp_path / "bind.npz"
    save(bind, input=arrays["input"], labels=arrays["labels"])
    spec = TensorSpec(name="input", shape=["n", 1, 8, 8], dtype="float32")
    dataset = Dataset.from_npz(bind, [spec], tmp_path / "scratch2")
    assert dataset.arrays["input"].dtype == np.float32
    assert np.array_equal(dataset.arrays["input"], arrays["input"].astype(np.float32))
    assert isinstance(dataset.arrays["input"].base, np.memmap)  # cast on disk, not in memory
    dataset.arrays["input"][0] = 0  # copy-on-write: a pass may write into its data


def test_labels_past_every_output_class_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input=np.zeros((4, 1, 8, 8), np.float32), labels=np.array([0, 3, 12, 1]))
    inputs = [TensorSpec(name="input", shape=["n", 1, 8, 8], dtype="float32")]
    logits = [TensorSpec(name="logits", shape=["n", 10], dtype="float32")]
    with pytest.raises(DatasetMismatchError, match="class index 12.*at most 10 classes"):
        DatasetBundle.load({"eval": path}, inputs, tmp_path / "s", outputs=logits)
    wide = [TensorSpec(name="logits", shape=["n", 16], dtype="float32")]
    assert DatasetBundle.load({"eval": path}, inputs, tmp_path / "s2", outputs=wide).eval is not None
    unknown = [TensorSpec(name="logits", shape=["n", "classes"], dtype="float32")]  # cannot tell: accepted
    assert DatasetBundle.load({"eval": path}, inputs, tmp_path / "s3", outputs=unknown).eval is not None


@pytest.mark.slow
def test_inputs_too_large_for_the_worker_fail_saying_what(tmp_path: Path) -> None:
    """An input declared ['n', 6000, 6000] fits MAX_INPUT_SAMPLE_BYTES per sample, but not SYNTHETIC_SAMPLES of
    them: the job fails `out_of_memory` naming the allocation, not `internal_error MemoryError`. The worker runs
    under an 8 GiB address-space limit, so the allocation fails the same way on any machine."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6000, 6000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6000, 6000])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with TestClient(create_app(Settings(data_dir=tmp_path / "data"))) as client:
        response = client.post("/v1/models", files={"file": ("big.onnx", model.SerializeToString())})
        assert response.status_code == 201, response.text
        body = {"model_id": response.json()["id"], "steps": [{"type": "quantize", "mode": "dynamic"}]}
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        outcome, _ = _run_job_peak_mib(job_id, {"DATA_DIR": str(tmp_path / "data"), **FAST}, limit_bytes=8 << 30)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert outcome == "failed" and job["error"]["code"] == "out_of_memory", job["error"]
    assert "6000" in job["error"]["message"] and "SYNTHETIC_SAMPLES" in job["error"]["message"]
