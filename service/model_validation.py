"""Uploaded models are validated in a child process, so the API never holds a model in memory.

`check_model` is the validation itself: onnx.checker, the opset this service knows, numeric inputs whose fixed
dims fit MAX_INPUT_SAMPLE_BYTES (an input declared [100000, 100000] is refused naming it, rather than failing
later in a worker with MemoryError). Checking parses the whole protobuf, initializers included, so
`validate_isolated` runs it in a child forked from a forkserver that has onnx imported (a few ms per upload),
under an address-space limit (MODEL_VALIDATION_MEMORY_BYTES, `resource.setrlimit(RLIMIT_AS)` in the child) and a
time limit (MODEL_VALIDATION_SECONDS: the child is killed past it). The child sends back the model's description
or the reason it was refused; every way it can fail (refused, out of memory, killed, too slow) becomes an
`InvalidModelError` whose message says what to fix.

A multiprocessing child normally imports the parent's main script again (as `__mp_main__`), which would run an
unguarded script that embeds the app once per upload; the fork server is told the parent's main module
(ONNX_COMPRESS_VALIDATION_MAIN, set before it starts) and marks it loaded, so validation children never run it.
"""

from __future__ import annotations

import importlib.machinery
import json
import multiprocessing
import multiprocessing.spawn
import os
import resource
import signal
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError, Message

from compression.errors import CompressionError, InvalidModelError
from compression.model_info import ModelInfo, describe
from service.model_skeleton import read_skeleton

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float
JOIN_SECONDS = 10.0
MAIN_ENV = "ONNX_COMPRESS_VALIDATION_MAIN"


class ModelRefused(InvalidModelError):
    """The child's verdict, keeping the code of the error it raised."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _external_tensor(message: Message) -> str | None:
    """The name of a tensor anywhere in the message (subgraphs, attributes, functions) kept in an external file."""
    if isinstance(message, onnx.TensorProto) and message.data_location == onnx.TensorProto.EXTERNAL:
        return message.name or "(unnamed)"
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        for item in value if descriptor.is_repeated else [value]:
            found = _external_tensor(item)
            if found is not None:
                return found
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0][:500]


def read_model_skeleton(path: Path) -> onnx.ModelProto:
    """The model without its initializers' data (see service.model_skeleton), checked by onnx.checker."""
    with path.open("rb") as handle:
        skeleton = read_skeleton(handle, path.stat().st_size)
    try:
        model = onnx.ModelProto.FromString(skeleton)
    except (DecodeError, ValueError) as exc:
        raise InvalidModelError(f"not a valid ONNX model: could not parse the file ({_first_line(exc)})") from None
    external = _external_tensor(model)
    if external is not None:
        raise InvalidModelError(
            f"tensor {external!r} keeps its data in an external file: upload one .onnx file with every weight "
            "inside it (onnx.save(model, path, save_as_external_data=False))"
        )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"not a valid ONNX model: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - the checker's other errors on malformed protos
        raise InvalidModelError(f"not a valid ONNX model: could not parse the file ({_first_line(exc)})") from None
    if not model.graph.output:
        raise InvalidModelError("not a valid ONNX model: the graph has no outputs")
    return model


def check_model(path: Path, max_input_sample_bytes: int) -> ModelInfo:
    """Validate an .onnx file in this process (reading its graph, not its weights): its description, or
    InvalidModelError saying what is wrong."""
    info = describe(read_model_skeleton(path))
    newest = onnx.defs.onnx_opset_version()
    if info.opset > newest:
        raise InvalidModelError(
            f"the model imports opset {info.opset}; this service's onnx knows opsets up to {newest}: "
            "export the model with a supported opset"
        )
    for spec in info.inputs:
        try:
            dtype = np.dtype(spec.dtype)
        except TypeError:
            dtype = np.dtype(object)
        if dtype.kind not in NUMERIC_KINDS and not spec.dtype.startswith(("bfloat", "float")):  # ml_dtypes floats
            raise InvalidModelError(
                f"input {spec.name!r} has element type {spec.dtype}: the service feeds numeric inputs only "
                "(bool, int, uint, float)"
            )
        negative = [dim for dim in spec.shape if isinstance(dim, int) and dim < 0]
        if negative:
            raise InvalidModelError(f"input {spec.name!r} declares a negative dimension {negative[0]}: {spec.shape}")
        elements = 1
        for dim in spec.shape:
            if isinstance(dim, int) and dim > 0:
                elements *= dim
        if elements * dtype.itemsize > max_input_sample_bytes:
            shape = "x".join(str(d) for d in spec.shape)
            raise InvalidModelError(
                f"input {spec.name!r} is declared [{shape}] {spec.dtype}: {elements * dtype.itemsize} bytes per "
                f"sample, over the limit of {max_input_sample_bytes} (setting MAX_INPUT_SAMPLE_BYTES)"
            )
    return info


def _child(path: str, max_input_sample_bytes: int, memory_bytes: int, conn: Connection) -> None:
    """Runs in the validation child: limit the address space, check, send ("ok", info) or ("refused", code, msg)."""
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        info = check_model(Path(path), max_input_sample_bytes)
        conn.send(("ok", info.model_dump()))
    except MemoryError:
        conn.send(("memory", "", ""))
    except CompressionError as exc:
        conn.send(("refused", exc.code, exc.message))
    except Exception as exc:  # a reader's own error on a malformed file
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        conn.send(("refused", "invalid_model", f"could not read the model: {type(exc).__name__}: {text}"))
    finally:
        conn.close()


def _adopt_parent_main() -> None:
    """In the fork server (this module is preloaded there): make the parent's main module look loaded already,
    so multiprocessing's preparation of each child (spawn.prepare) skips re-running it."""
    raw = os.environ.get(MAIN_ENV)
    main = sys.modules.get("__main__")
    if not raw or main is None or "multiprocessing.forkserver" not in sys.modules or getattr(main, "__file__", None):
        return
    parent = json.loads(raw)
    if parent.get("init_main_from_name"):
        main.__spec__ = importlib.machinery.ModuleSpec(parent["init_main_from_name"], None)
    elif parent.get("init_main_from_path"):
        main.__file__ = parent["init_main_from_path"]


_adopt_parent_main()

_context_lock = threading.Lock()
_context: multiprocessing.context.BaseContext | None = None


def _fork_context() -> multiprocessing.context.BaseContext:
    """A forkserver context whose server has this module (onnx, numpy) imported: children fork ready to check."""
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            data = multiprocessing.spawn.get_preparation_data("model-validation")
            keys = ("init_main_from_name", "init_main_from_path")
            os.environ[MAIN_ENV] = json.dumps({key: data[key] for key in keys if key in data})
            context.set_forkserver_preload([__name__])
            _context = context
        return _context


def validate_isolated(path: Path, max_input_sample_bytes: int, memory_bytes: int, seconds: float) -> ModelInfo:
    """`check_model` in a child process bounded by `memory_bytes` of address space and `seconds` of wall time."""
    receive, send = _fork_context().Pipe(duplex=False)
    child = _fork_context().Process(  # type: ignore[attr-defined]
        target=_child, args=(str(path), max_input_sample_bytes, memory_bytes, send), daemon=True
    )
    child.start()
    send.close()
    try:
        verdict = receive.recv() if receive.poll(seconds) else None
    except EOFError:  # the child died without answering (killed, aborted on a failed allocation)
        verdict = ()
    finally:
        receive.close()
        if verdict is None and child.is_alive():
            child.kill()
        child.join(JOIN_SECONDS)
        if child.is_alive():
            child.kill()
            child.join(JOIN_SECONDS)
    if verdict is None:
        raise InvalidModelError(
            f"validating the model took longer than {seconds:g} s (setting MODEL_VALIDATION_SECONDS)"
        )
    if verdict and verdict[0] == "ok":
        return ModelInfo.model_validate(verdict[1])
    if verdict and verdict[0] == "refused":
        raise ModelRefused(verdict[1], verdict[2])
    how = f"signal {signal.Signals(-child.exitcode).name}" if (child.exitcode or 0) < 0 else f"exit {child.exitcode}"
    raise ModelRefused(
        "model_too_large_to_validate",
        f"validating the model needs more than {memory_bytes} bytes of memory (setting "
        f"MODEL_VALIDATION_MEMORY_BYTES; the validator stopped: {'out of memory' if verdict else how})",
    )
