"""How long can a job thread keep a worker's heartbeat thread waiting? (Both share the GIL.)

A thread that wakes every 50 ms, as the heartbeat does every JOB_HEARTBEAT_SECONDS, records its longest gap while
the main thread runs work a job does: pure-Python and numpy loops hand the GIL over every few milliseconds;
C calls that keep it (protobuf serialization and parsing, ONNX checker and shape inference) delay the beat until
they return, in proportion to the model's size. The lease (JOB_LEASE_SECONDS) must exceed the longest such call.

    python bench/heartbeat_gaps.py [--mb 200]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

TICK_S = 0.05


def longest_gap(work: Callable[[], object]) -> tuple[float, float]:
    """(seconds the work took, longest gap between the ticking thread's wake-ups)."""
    gaps: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        last = time.monotonic()
        while not stop.wait(TICK_S):
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    started = time.monotonic()
    work()
    took = time.monotonic() - started
    stop.set()
    thread.join()
    return took, max(gaps, default=took)


def chain_of_matmuls(megabytes: int) -> onnx.ModelProto:
    count = max(1, megabytes // 4)  # 1024 x 1024 float32 = 4 MB each
    weights = [numpy_helper.from_array(np.random.rand(1024, 1024).astype(np.float32), f"w{i}") for i in range(count)]
    nodes, previous = [], "x"
    for i in range(count):
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"y{i}"]))
        previous = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, 1024])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def pure_python() -> int:
    total = 0
    for i in range(20_000_000):
        total += i
    return total


def numpy_work() -> None:
    a = np.random.rand(3000, 3000).astype(np.float32)
    for _ in range(3):
        _ = a @ a
        np.sort(a, axis=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the test model's weights")
    megabytes = parser.parse_args().mb
    model = chain_of_matmuls(megabytes)
    data = model.SerializeToString()
    cases: list[tuple[str, Callable[[], object]]] = [
        ("pure-Python loop", pure_python),
        ("numpy matmul + sort", numpy_work),
        (f"SerializeToString {megabytes} MB", model.SerializeToString),
        (f"onnx.load_from_string {megabytes} MB", lambda: onnx.load_from_string(data)),
        ("onnx.checker.check_model", lambda: onnx.checker.check_model(model)),
        ("onnx.shape_inference.infer_shapes", lambda: onnx.shape_inference.infer_shapes(model)),
        ("ort.InferenceSession", lambda: ort.InferenceSession(data, providers=["CPUExecutionProvider"])),
    ]
    print("| work | took (s) | longest heartbeat gap (s) | gap per 100 MB (s) |")
    print("|---|---|---|---|")
    for name, work in cases:
        took, gap = longest_gap(work)
        per_100mb = f"{gap * 100 / megabytes:.2f}" if "MB" in name or name.startswith(("onnx", "ort")) else "-"
        print(f"| {name} | {took:.2f} | {gap:.2f} | {per_100mb} |")


if __name__ == "__main__":
    main()
