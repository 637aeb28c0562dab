"""What an upload must satisfy before it is stored, beyond being a readable file: bounded sizes and sane data.

Models: checked in a child process (service.model_validation: onnx.checker on the graph without its weights,
numeric inputs whose fixed dims fit MAX_INPUT_SAMPLE_BYTES, so an input declared [100000, 100000] is refused here,
naming it, rather than failing later in a worker with MemoryError).
Datasets: numeric arrays only; the unpacked size, read from the .npy headers, within
MAX_DATASET_UNCOMPRESSED_BYTES (a zip bomb is refused before anything is unpacked); every array's data streamed
once in bounded chunks, so a truncated member, NaN or infinity is refused at upload; `labels` of rank 1 (or
[n, 1]) holding integer class indices in [0, MAX_LABEL_VALUE] (float labels would give no accuracy: refused).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from fastapi import status

from app.errors import ApiError
from compression.datasets import LABELS, describe_npz
from compression.errors import DatasetMismatchError
from compression.model_info import ModelInfo
from service.model_validation import NUMERIC_KINDS, validate_isolated
from service.settings import Settings

CHUNK_BYTES = 8 << 20


def check_model(path: Path, settings: Settings) -> ModelInfo:
    """Validated in a child process bounded by MODEL_VALIDATION_MEMORY_BYTES and MODEL_VALIDATION_SECONDS
    (service.model_validation): the API process never holds the model."""
    return validate_isolated(
        path,
        max_input_sample_bytes=settings.max_input_sample_bytes,
        memory_bytes=settings.model_validation_memory_bytes,
        seconds=settings.model_validation_seconds,
    )


def check_dataset(path: Path, settings: Settings) -> tuple[dict[str, dict[str, object]], int]:
    try:
        arrays, n_samples = describe_npz(path)
    except DatasetMismatchError:
        raise
    except Exception as exc:  # numpy's header parser raises tokenizer and syntax errors on a bad header
        raise DatasetMismatchError(
            f"not a readable .npz file: an .npy header is malformed ({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc
    total = 0
    for name, info in arrays.items():
        try:
            dtype = np.dtype(str(info["dtype"]))
        except TypeError:  # text, bytes and structured dtypes have names numpy cannot read back
            dtype = np.dtype(object)
        if dtype.kind not in NUMERIC_KINDS:
            raise DatasetMismatchError(
                f"array {name!r} has dtype {info['dtype']} ({_kind_name(str(info['dtype']))}): datasets hold numeric arrays "
                "(bool, int, uint, float)"
            )
        total += int(np.prod(info["shape"], dtype=np.float64)) * dtype.itemsize
    if total > settings.max_dataset_uncompressed_bytes:
        raise ApiError(
            status.HTTP_413_CONTENT_TOO_LARGE,
            "dataset_too_large_unpacked",
            f"the dataset's arrays unpack to {total} bytes, over the limit of "
            f"{settings.max_dataset_uncompressed_bytes} (setting MAX_DATASET_UNCOMPRESSED_BYTES)",
        )
    if LABELS in arrays:
        _check_labels_shape(arrays[LABELS], n_samples)
    with zipfile.ZipFile(path) as archive:
        for name, info in arrays.items():
            _scan_member(archive, name, info, settings)
    if LABELS in arrays and np.dtype(str(arrays[LABELS]["dtype"])).kind == "f":  # accuracy needs class indices
        raise DatasetMismatchError(
            f"'{LABELS}' has dtype {arrays[LABELS]['dtype']}: give integer class indices, one per sample "
            f"(e.g. labels.astype(np.int64))"
        )
    return arrays, n_samples


def _kind_name(name: str) -> str:
    for prefix, kind in (("str", "text"), ("bytes", "bytes"), ("void", "raw/structured"), ("complex", "complex")):
        if name.startswith(prefix):
            return kind
    return "not numeric"


def _check_labels_shape(info: dict[str, object], n_samples: int) -> None:
    shape = list(info["shape"])  # type: ignore[call-overload]
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise DatasetMismatchError(
            f"'{LABELS}' has shape {shape}: give one class index per sample, shape [{n_samples}] (or [{n_samples}, 1])"
        )


def _scan_member(archive: zipfile.ZipFile, name: str, info: dict[str, object], settings: Settings) -> None:
    """Stream the array's data once: its length must match the header; floats finite; labels in range."""
    dtype = np.dtype(str(info["dtype"]))
    expected = int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize
    chunk = max(dtype.itemsize, CHUNK_BYTES - CHUNK_BYTES % dtype.itemsize)
    seen = 0
    with archive.open(f"{name}.npy") as handle:
        version = np.lib.format.read_magic(handle)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        header(handle, max_header_size=1 << 20)
        while seen < expected:
            data = handle.read(min(chunk, expected - seen))
            if not data:
                break
            if len(data) % dtype.itemsize:
                break
            seen += len(data)
            values = np.frombuffer(data, dtype=dtype)
            if dtype.kind == "f" and not np.isfinite(values).all():
                raise DatasetMismatchError(f"array {name!r} holds NaN or infinite values; every value must be finite")
            if name == LABELS and dtype.kind in "iu" and values.size:
                low, high = int(values.min()), int(values.max())
                if low < 0 or high > settings.max_label_value:
                    raise DatasetMismatchError(
                        f"'{LABELS}' holds {low if low < 0 else high}: class indices go from 0 to at most "
                        f"{settings.max_label_value} (setting MAX_LABEL_VALUE)"
                    )
    if seen != expected:
        raise DatasetMismatchError(
            f"array {name!r} is truncated: its header declares {expected} bytes of data, the file holds {seen}"
        )
