"""On-disk cache of built dev models, safe for parallel pytest workers.

Each model is two files named ``<name>-v<version>-seed<seed>``: the ``.onnx`` and an ``.npz`` holding
its data plus JSON metadata. The npz is written last, so its presence marks a complete entry. Writes
go through a temp file + rename, and a per-key ``flock`` keeps concurrent processes from training the
same model twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from model_zoo.devmodel import BuiltModel, DevModel, Inputs

CACHE_ENV = "MODEL_ZOO_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[1]
_META_KEY = "meta_json"
_DICT_SEP = "__"


def cache_root() -> Path:
    """Cache folder: ``$MODEL_ZOO_CACHE`` or ``<repo>/.cache/model_zoo``."""
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache" / "model_zoo")


def cache_key(name: str, version: int, seed: int) -> str:
    """File stem of a model: bumping the builder version invalidates old entries."""
    return f"{name}-v{version}-seed{seed}"


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """Binary handle on a sibling temp file renamed onto ``path`` on success, so readers never see
    a partial file; on error the temp file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the cache from other users of a shared folder
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock held for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _flatten(prefix: str, inputs: Inputs) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict):
        return {f"{prefix}{_DICT_SEP}{name}": array for name, array in inputs.items()}
    return {prefix: inputs}


def _unflatten(prefix: str, arrays: dict[str, np.ndarray]) -> Inputs:
    if prefix in arrays:
        return arrays[prefix]
    head = f"{prefix}{_DICT_SEP}"
    return {key[len(head) :]: array for key, array in arrays.items() if key.startswith(head)}


def _write_entry(stem: Path, built: BuiltModel, meta: dict[str, object]) -> None:
    with atomic_open(stem.with_suffix(".onnx")) as handle:
        handle.write(built.model.SerializeToString())
    arrays = {
        **_flatten("x_train", built.x_train),
        **_flatten("x_test", built.x_test),
        "y_train": built.y_train,
        "y_test": built.y_test,
        _META_KEY: np.array(json.dumps(meta, sort_keys=True)),
    }
    with atomic_open(stem.with_suffix(".npz")) as handle:
        np.savez(handle, **arrays)


def _read_entry(stem: Path) -> DevModel:
    with np.load(stem.with_suffix(".npz"), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(str(arrays.pop(_META_KEY)))
    return DevModel(
        path=stem.with_suffix(".onnx"),
        x_train=_unflatten("x_train", arrays),
        y_train=arrays["y_train"],
        x_test=_unflatten("x_test", arrays),
        y_test=arrays["y_test"],
        **meta,
    )


def _is_complete(stem: Path) -> bool:
    return stem.with_suffix(".npz").is_file() and stem.with_suffix(".onnx").is_file()


def load_or_build(
    name: str, version: int, seed: int, build: Callable[[], BuiltModel], root: Path | None = None
) -> DevModel:
    """Return the cached model, building (and caching) it first if absent."""
    stem = (root or cache_root()) / cache_key(name, version, seed)
    if _is_complete(stem):
        return _read_entry(stem)
    with file_lock(stem.with_suffix(".lock")):
        if not _is_complete(stem):  # another process may have built it while we waited
            started = time.perf_counter()
            built = build()
            meta = {
                "name": name,
                "version": version,
                "seed": seed,
                "input_name": built.input_name,
                "output_name": built.output_name,
                "accuracy": built.accuracy,
                "num_parameters": built.num_parameters,
                "build_seconds": round(time.perf_counter() - started, 3),
            }
            _write_entry(stem, built, meta)
    return _read_entry(stem)
