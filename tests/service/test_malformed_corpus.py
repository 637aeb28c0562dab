"""A corpus of malformed models (>= 40) and datasets (>= 25), built here: each one gets a 4xx, or is accepted and
its job ends with a reason (run in-process with the worker's own `run_job`) — never a 500, never a temp file left
in incoming/ or work/ (no empty work/<job_id>/ either), nothing written outside the data directory (nor in the
current directory), no server path in a failed job's message.

The Loop bomb (a Loop with trip count 2^62, a few hundred bytes) is accepted at upload: its job fails saying the
run exceeded EVAL_MAX_RUN_SECONDS (set small here), and canceling it while it runs stops it promptly."""

from __future__ import annotations

import io
import os
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from app.main import create_app
from service.settings import Settings
from workers.job_runner import run_job

MAX_MODEL_BYTES = 4_000_000
MAX_DATASET_BYTES = 2_000_000
JOB_TIMEOUT_S = 240
EVAL_MAX_RUN_SECONDS = 3  # per onnxruntime run in these jobs: the Loop bomb fails after it
LOOP_BOMB_BOUND_S = 90  # generous: one time-limited run plus the job's set-up on a loaded machine
CANCEL_BOUND_S = 45


def _model(nodes, inputs, outputs, initializers=(), opset: int = 17, **kwargs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)


def _vi(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _relu(**kwargs) -> onnx.ModelProto:
    return _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", ["n", 4])], [_vi("y", ["n", 4])], **kwargs)


def _raw_tensor(name: str, dims: list[int], raw: bytes = b"") -> onnx.TensorProto:
    """A float tensor whose data need not match its dims (onnx.helper refuses to build one)."""
    tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    tensor.raw_data = raw
    return tensor


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def _external(location: str) -> bytes:
    weight = _raw_tensor("w", [4])
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    weight.external_data.add(key="length", value="16")
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    return _bytes(_model(nodes, [_vi("x", ["n", 4])], [_vi("y", ["n", 4])], [weight]))


def _nested_if(depth: int) -> bytes:
    body_out = _vi("y", [1])
    leaf = graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [], [body_out])
    for level in range(depth):
        node = helper.make_node("If", ["c"], ["y"], then_branch=graph, else_branch=leaf)
        graph = helper.make_graph([node], f"g{level}", [], [_vi("y", [1])])
    top = helper.make_graph(list(graph.node), "top", [_vi("c", [], TensorProto.BOOL), _vi("x", [1])], [_vi("y", [1])])
    return _bytes(helper.make_model(top, opset_imports=[helper.make_opsetid("", 17)]))


def _loop(trip_count: int) -> bytes:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("v_in", [1])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("v_out", [1])],
    )
    inits = [
        numpy_helper.from_array(np.array(trip_count, np.int64), "M"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    nodes = [helper.make_node("Loop", ["M", "cond", "x"], ["y"], body=body)]
    return _bytes(_model(nodes, [_vi("x", [1])], [_vi("y", [1])], inits))


def _constant_of_shape(shape: list[int]) -> bytes:
    inits = [numpy_helper.from_array(np.array(shape, np.int64), "s")]
    nodes = [helper.make_node("ConstantOfShape", ["s"], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])]
    return _bytes(_model(nodes, [_vi("x", [1])], [_vi("y", None)], inits))


def model_corpus(digits: bytes) -> dict[str, bytes]:
    rng = np.random.default_rng(11)
    relu = _relu()
    corpus: dict[str, bytes] = {
        "empty": b"",
        "random_1k": rng.bytes(1024),
        "random_64k": rng.bytes(65536),
        "text": b"this is not a model\n" * 10,
        "json": b'{"graph": {"node": []}}',
        "zip": b"PK\x03\x04" + rng.bytes(200),
        "npz": (lambda b: (np.savez(b, x=np.zeros(3)), b.getvalue())[1])(io.BytesIO()),
        "truncated_10": digits[: len(digits) // 10],
        "truncated_50": digits[: len(digits) // 2],
        "truncated_90": digits[: len(digits) * 9 // 10],
        "flipped_header": bytes([digits[0] ^ 0xFF]) + digits[1:],
        "over_limit": b"\x08" * (MAX_MODEL_BYTES + 10),
        "opset_99": _bytes(_relu(opset=99)),
        "ir_version_999": _bytes(helper.make_model(relu.graph, ir_version=999, opset_imports=relu.opset_import)),
        "no_opset": _bytes(helper.make_model(relu.graph, opset_imports=[])),
        "unknown_op": _bytes(_model([helper.make_node("FooBar", ["x"], ["y"])], [_vi("x", [4])], [_vi("y", [4])])),
        "unknown_domain": _bytes(
            _model(
                [helper.make_node("Relu", ["x"], ["y"], domain="com.evil")],
                [_vi("x", [4])],
                [_vi("y", [4])],
            )
        ),
        "empty_op_type": _bytes(_model([helper.make_node("", ["x"], ["y"])], [_vi("x", [4])], [_vi("y", [4])])),
        "cycle": _bytes(
            _model(
                [helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Relu", ["a"], ["b"])],
                [_vi("x", [4])],
                [_vi("b", [4])],
            )
        ),
        "undefined_input": _bytes(
            _model([helper.make_node("Add", ["x", "ghost"], ["y"])], [_vi("x", [4])], [_vi("y", [4])])
        ),
        "duplicate_output": _bytes(
            _model(
                [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])],
                [_vi("x", [4])],
                [_vi("y", [4])],
            )
        ),
        "duplicate_input": _bytes(
            _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4]), _vi("x", [4])], [_vi("y", [4])])
        ),
        "no_outputs": _bytes(_model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4])], [])),
        "no_nodes_undefined_output": _bytes(_model([], [_vi("x", [4])], [_vi("y", [4])])),
        "external_parent": _external("../../../../../etc/passwd"),
        "external_absolute": _external("/etc/passwd"),
        "external_missing": _external("weights.bin"),
        "external_symlink": _external("planted-link.bin"),
        "huge_dims": _bytes(
            _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [100000, 100000])], [_vi("y", [100000, 100000])])
        ),
        "huge_dims_int64": _bytes(
            _model(
                [helper.make_node("Relu", ["x"], ["y"])],
                [_vi("x", [2**40, 2**20], TensorProto.INT64)],
                [_vi("y", [2**40, 2**20], TensorProto.INT64)],
            )
        ),
        "negative_dim": _bytes(_model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [-5, 4])], [_vi("y", [4])])),
        "undefined_dtype": _bytes(
            _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [4], 0)], [_vi("y", [4], 0)])
        ),
        "string_input": _bytes(
            _model(
                [helper.make_node("Identity", ["x"], ["y"])],
                [_vi("x", [4], TensorProto.STRING)],
                [_vi("y", [4], TensorProto.STRING)],
            )
        ),
        "nested_if_8": _nested_if(8),
        "nested_if_30": _nested_if(30),
        "huge_attribute_list": _bytes(
            _model(
                [helper.make_node("Transpose", ["x"], ["y"], perm=list(range(200_000)))],
                [_vi("x", [4])],
                [_vi("y", [4])],
            )
        ),
        "huge_attribute_tensor_claim": _bytes(
            _model(
                [
                    helper.make_node("Constant", [], ["c"], value=_raw_tensor("v", [10**9])),
                    helper.make_node("Add", ["x", "c"], ["y"]),
                ],
                [_vi("x", [1])],
                [_vi("y", [1])],
            )
        ),
        "initializer_size_mismatch": _bytes(
            _model(
                [helper.make_node("Add", ["x", "w"], ["y"])],
                [_vi("x", [4])],
                [_vi("y", [4])],
                [_raw_tensor("w", [1000], b"\0" * 8)],
            )
        ),
        "initializer_negative_dims": _bytes(
            _model(
                [helper.make_node("Add", ["x", "w"], ["y"])],
                [_vi("x", [4])],
                [_vi("y", [4])],
                [_raw_tensor("w", [-4])],
            )
        ),
        "nan_weights": _bytes(
            _model(
                [helper.make_node("Add", ["x", "w"], ["y"])],
                [_vi("x", ["n", 4])],
                [_vi("y", ["n", 4])],
                [numpy_helper.from_array(np.array([np.nan, np.inf, -np.inf, 1.0], np.float32), "w")],
            )
        ),
        "loop_2_62": _loop(2**62),
        "constant_of_shape_huge": _constant_of_shape([1_000_000, 1_000_000]),
        "reshape_to_wrong_size": _bytes(
            _model(
                [helper.make_node("Reshape", ["x", "s"], ["y"])],
                [_vi("x", [1, 4])],
                [_vi("y", None)],
                [numpy_helper.from_array(np.array([3, 5], np.int64), "s")],
            )
        ),
    }
    assert len(corpus) >= 40, len(corpus)
    return corpus


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def dataset_corpus() -> dict[str, bytes]:
    rng = np.random.default_rng(12)
    good = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    valid = _npz(input=good)
    object_buffer = io.BytesIO()
    np.savez(object_buffer, input=np.array([{"a": 1}, None], dtype=object))
    corpus = {
        "empty": b"",
        "random": rng.bytes(4096),
        "truncated": valid[: len(valid) // 2],
        "plain_npy": (lambda b: (np.save(b, good), b.getvalue())[1])(io.BytesIO()),
        "non_npy_member": _zip({"input.npy": valid, "readme.txt": b"hi"}),
        "bad_header": _zip({"input.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4, 'shape': ("}),
        "bad_magic_version": _zip({"input.npy": b"\x93NUMPY\x03\x00" + b"\0" * 64}),
        "empty_zip": _zip({}),
        "object_array": object_buffer.getvalue(),
        "str_array": _npz(input=np.array(["a"] * 8)),
        "bytes_array": _npz(input=np.array([b"a"] * 8)),
        "structured": _npz(input=np.zeros(8, dtype=[("a", "f4"), ("b", "i4")])),
        "complex": _npz(input=np.zeros((8, 1, 8, 8), np.complex64)),
        "nan": _npz(input=np.where(good > 1, np.nan, good).astype(np.float32)),
        "inf": _npz(input=np.where(good > 1, np.inf, good).astype(np.float32)),
        "zip_bomb_header": _zip({"input.npy": _npy_header((2**33, 1, 8, 8)) + b"\0" * 4096}, zipfile.ZIP_DEFLATED),
        "zip_bomb_deflated": _zip(
            {"input.npy": _npy_header((400_000, 1, 8, 8)) + b"\0" * (400_000 * 256)}, zipfile.ZIP_DEFLATED
        ),
        "data_truncated": _zip({"input.npy": _npy_header((8, 1, 8, 8)) + b"\0" * 100}),
        "labels_rank2": _npz(input=good, labels=np.zeros((8, 3), np.int64)),
        "labels_negative": _npz(input=good, labels=-np.ones(8, np.int64)),
        "labels_huge": _npz(input=good, labels=np.full(8, 2**40, np.int64)),
        "labels_nan": _npz(input=good, labels=np.full(8, np.nan, np.float32)),
        "labels_text": _npz(input=good, labels=np.array(["cat"] * 8)),
        "labels_float": _npz(input=good, labels=np.zeros(8, np.float32)),
        # accepted at upload and submission; the job fails saying so (the digits CNN scores 10 classes)
        "labels_past_classes": _npz(input=good, labels=np.full(8, 57, np.int64)),
        "ragged": _npz(input=good, labels=np.zeros(5, np.int64)),
        "no_samples": _npz(input=np.zeros((0, 1, 8, 8), np.float32)),
        "over_limit": _zip({"input.npy": rng.bytes(MAX_DATASET_BYTES + 10)}),
        "traversal_member": _zip({"../../evil.npy": valid}),
        # accepted at upload; refused at submission (they do not fit the model)
        "wrong_name": _npz(x=good),
        "wrong_rank": _npz(input=good.reshape(8, 64)),
        "wrong_inner_shape": _npz(input=rng.standard_normal((8, 1, 7, 7)).astype(np.float32)),
        "wrong_dtype_int": _npz(input=np.zeros((8, 1, 8, 8), np.int64)),
        "wrong_dtype_bool": _npz(input=np.zeros((8, 1, 8, 8), bool)),
        "extra_array": _npz(input=good, other=good),
    }
    assert len(corpus) >= 25, len(corpus)
    return corpus


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    knobs = {"LATENCY_RUNS": "5", "LATENCY_WARMUP": "1", "SYNTHETIC_SAMPLES": "8"}
    for name, value in {**knobs, "EVAL_MAX_RUN_SECONDS": str(EVAL_MAX_RUN_SECONDS)}.items():
        monkeypatch.setenv(name, value)
    return Settings(
        data_dir=tmp_path / "data",
        max_model_bytes=MAX_MODEL_BYTES,
        max_dataset_bytes=MAX_DATASET_BYTES,
        max_dataset_uncompressed_bytes=64 * 1024 * 1024,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def _upload(client: TestClient, route: str, name: str, content: bytes):
    return client.post(route, files={"file": (name, content, "application/octet-stream")})


def _tree(root: Path, skip: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if not p.is_relative_to(skip)}


def _run_with_timeout(job_id: str, settings: Settings) -> float:
    started = time.monotonic()
    thread = threading.Thread(target=run_job, args=(job_id, settings), daemon=True)
    thread.start()
    thread.join(JOB_TIMEOUT_S)
    assert not thread.is_alive(), f"job {job_id} still running after {JOB_TIMEOUT_S} s"
    return time.monotonic() - started


def _cwd_files() -> set[str]:
    """What a run might leave in the current directory (onnxruntime's sym_shape_infer_temp.onnx, *.data, ...)."""
    return {p.name for p in Path.cwd().iterdir() if p.is_file()}


def _assert_no_server_path(message: str, settings: Settings) -> None:
    assert str(settings.data_dir.resolve()) not in message and "/tmp/" not in message, message


def _check_work_clean(settings: Settings) -> None:
    """Every job's work directory is gone, work/<job_id>/ included."""
    left = sorted(str(p.relative_to(settings.work_dir)) for p in settings.work_dir.rglob("*"))
    assert not left, left


def _assert_4xx_problem(response, name: str) -> None:
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:500])
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"] and body["code"], (name, body)


def _check_incoming_clean(settings: Settings, allowed: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    incoming = settings.data_dir / "incoming"
    left = {p.name for p in incoming.iterdir()} - allowed if incoming.exists() else set()
    assert not left, left


@pytest.mark.slow
def test_malformed_models(client: TestClient, settings: Settings, tmp_path: Path, digits_cnn) -> None:
    incoming = settings.data_dir / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "outside-secret.bin"
    secret.write_bytes(b"\0" * 16)
    os.symlink(secret, incoming / "planted-link.bin")  # an external-data location that is a symlink out
    before = _tree(tmp_path, settings.data_dir)
    cwd_before = _cwd_files()
    outcomes: dict[str, str] = {}
    accepted: dict[str, str] = {}
    for name, content in model_corpus(digits_cnn.path.read_bytes()).items():
        response = _upload(client, "/v1/models", f"{name}.onnx", content)
        assert response.status_code < 500, (name, response.text[:500])
        if response.status_code == 201:
            accepted[name] = response.json()["id"]
            outcomes[name] = "accepted"
        else:
            _assert_4xx_problem(response, name)
            outcomes[name] = f"{response.status_code} {response.json()['code']}"
        _check_incoming_clean(settings, {"planted-link.bin"})
    for name, model_id in accepted.items():
        response = client.post(
            "/v1/jobs", json={"model_id": model_id, "steps": [{"type": "quantize", "mode": "dynamic"}]}
        )
        assert response.status_code < 500, (name, response.text[:500])
        if response.status_code != 202:
            _assert_4xx_problem(response, name)
            outcomes[name] = f"job {response.status_code}"
            continue
        job_id = response.json()["id"]
        seconds = _run_with_timeout(job_id, settings)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] in {"succeeded", "failed"}, (name, job)
        if name == "loop_2_62":  # accepted at upload; the reference run is stopped at EVAL_MAX_RUN_SECONDS
            assert job["status"] == "failed" and job["error"]["code"] == "run_time_limit", job
            assert "longer than" in job["error"]["message"] and "EVAL_MAX_RUN_SECONDS" in job["error"]["message"]
            assert seconds < LOOP_BOMB_BOUND_S, seconds
        if job["status"] == "failed":
            assert job["error"]["code"] and job["error"]["message"], (name, job)
            assert job["error"]["code"] != "internal_error", (name, job["error"])
            _assert_no_server_path(job["error"]["message"], settings)
        outcomes[name] = f"job {job['status']} {job['error']['code'] if job['error'] else ''}"
    assert _tree(tmp_path, settings.data_dir) == before  # nothing written outside the data directory
    assert _cwd_files() == cwd_before
    assert secret.read_bytes() == b"\0" * 16
    _check_work_clean(settings)
    assert outcomes["loop_2_62"].startswith("job failed run_time_limit"), outcomes["loop_2_62"]
    refused = [name for name, outcome in outcomes.items() if outcome[0] == "4"]
    print("\n".join(f"{name}: {outcome}" for name, outcome in outcomes.items()))
    assert len(refused) >= 30, outcomes
    for must_refuse in ("empty", "random_1k", "truncated_50", "opset_99", "cycle", "huge_dims", "external_parent"):
        assert outcomes[must_refuse][0] == "4", (must_refuse, outcomes[must_refuse])
    assert outcomes["external_symlink"][0] == "4", outcomes["external_symlink"]


@pytest.mark.slow
def test_malformed_datasets(client: TestClient, settings: Settings, tmp_path: Path, digits_cnn) -> None:
    response = _upload(client, "/v1/models", "digits.onnx", digits_cnn.path.read_bytes())
    assert response.status_code == 201, response.text
    model_id = response.json()["id"]
    before = _tree(tmp_path, settings.data_dir)
    cwd_before = _cwd_files()
    outcomes: dict[str, str] = {}
    for name, content in dataset_corpus().items():
        response = _upload(client, "/v1/datasets", f"{name}.npz", content)
        assert response.status_code < 500, (name, response.text[:500])
        _check_incoming_clean(settings)
        if response.status_code != 201:
            _assert_4xx_problem(response, name)
            outcomes[name] = f"{response.status_code} {response.json()['code']}"
            continue
        dataset_id = response.json()["id"]
        body = {
            "model_id": model_id,
            "steps": [{"type": "quantize", "mode": "dynamic"}],
            "datasets": {"eval": dataset_id},
        }
        response = client.post("/v1/jobs", json=body)
        assert response.status_code < 500, (name, response.text[:500])
        if response.status_code != 202:
            _assert_4xx_problem(response, name)
            outcomes[name] = f"job {response.status_code} {response.json()['code']}"
            continue
        job_id = response.json()["id"]
        _run_with_timeout(job_id, settings)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed" and job["error"]["message"], (name, job)
        assert job["error"]["code"] != "internal_error", (name, job["error"])
        _assert_no_server_path(job["error"]["message"], settings)
        outcomes[name] = f"job failed {job['error']['code']}"
    print("\n".join(f"{name}: {outcome}" for name, outcome in outcomes.items()))
    assert _tree(tmp_path, settings.data_dir) == before
    assert _cwd_files() == cwd_before
    _check_work_clean(settings)
    assert outcomes.pop("labels_past_classes") == "job failed dataset_mismatch"
    assert all(outcome[0] == "4" or outcome.startswith("job 4") for outcome in outcomes.values()), outcomes


def test_corpora_are_large_enough(digits_cnn) -> None:
    assert len(model_corpus(digits_cnn.path.read_bytes())) >= 40
    assert len(dataset_corpus()) >= 25


def test_loop_bomb_job_cancels_promptly(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running Loop-bomb job (here with a run limit far away) ends `canceled` soon after POST /cancel."""
    monkeypatch.setenv("EVAL_MAX_RUN_SECONDS", "600")
    slow_settings = Settings(data_dir=settings.data_dir, max_model_bytes=MAX_MODEL_BYTES)
    assert slow_settings.engine_settings().evaluation.max_run_seconds == 600.0
    response = _upload(client, "/v1/models", "loop.onnx", _loop(2**62))
    assert response.status_code == 201, response.text
    body = {"model_id": response.json()["id"], "steps": [{"type": "quantize", "mode": "dynamic"}]}
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    thread = threading.Thread(target=run_job, args=(job_id, slow_settings), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    time.sleep(2)  # inside the reference run's Loop by now
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    canceled_at = time.monotonic()
    thread.join(CANCEL_BOUND_S)
    assert not thread.is_alive(), f"the job still runs {CANCEL_BOUND_S} s after cancel"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "canceled", job
    print(f"canceled {time.monotonic() - canceled_at:.1f} s after POST /cancel")
    _check_work_clean(settings)
    _check_incoming_clean(settings)
