"""Datasets for calibration, training and evaluation, bound to a model's inputs.

An `.npz` holds one array per model input (plus optional `labels`). An array of the input's
rank holds samples along axis 0 (the batch axis); an array of rank + 1 holds one complete
input per entry of its leading axis, which is how fixed-batch and state inputs get samples.
A rank-0 input (a sample rate, a threshold) takes either one value per sample (shape [n], the
stacked layout) or a single 0-d value shared by every sample, whatever the other inputs' layout.

Every feed handed to onnxruntime is an np.ndarray of the input's declared rank: a rank-0 input
is fed as a 0-d array, never as a numpy scalar (onnxruntime rejects those).

Given a scratch directory (the worker's job directory), datasets are opened lazily: every array is a
(copy-on-write) memory map, of the .npz file itself for a stored member (`np.savez`), or of the member unpacked to scratch in
bounded chunks for a compressed one (`np.savez_compressed`); an array whose dtype differs from the input's is
cast to scratch in chunks too. The engine takes at most its settings' sample counts (EVAL_MAX_SAMPLES,
calibration_samples, DISTILL_MAX_TRAIN_SAMPLES) as views, so only those samples' pages are ever read: the
process's memory follows the settings, not the size of the data.
"""

from __future__ import annotations

import shutil
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from compression.errors import DatasetMismatchError
from compression.model_info import TensorSpec

LABELS = "labels"
Layout = Literal["batched", "stacked"]
COPY_CHUNK_BYTES = 8 << 20  # unpacking and casting stream through buffers of this size
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip member's local file header (30 bytes)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an npz; pickled object arrays are refused (they can run code)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DatasetMismatchError(f"not a readable .npz file: {exc}") from exc


def open_npz(path: Path, scratch: Path) -> dict[str, np.ndarray]:
    """Every array of an npz as a read-only memory map (compressed members unpacked into `scratch` first)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
            return {
                info.filename[:-4]: _map_member(path, archive, info, scratch / f"{path.stem}.{index}.npy")
                for index, info in enumerate(members)
            }
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DatasetMismatchError(f"not a readable .npz file: {exc}") from exc


def _map_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, unpacked: Path) -> np.ndarray:
    with archive.open(info) as handle:
        version = np.lib.format.read_magic(handle)
        read_header = _HEADER_READERS.get(version)
        if read_header is None:
            raise DatasetMismatchError(f"array {info.filename[:-4]!r} uses an unknown .npy format {version}")
        shape, fortran, dtype = read_header(handle, max_header_size=1 << 20)
        if dtype.hasobject:
            raise DatasetMismatchError(f"array {info.filename[:-4]!r} holds Python objects; use numeric arrays")
        header_bytes = handle.tell()
        if info.compress_type != zipfile.ZIP_STORED:  # deflated: unpack to scratch, streamed
            handle.seek(0)
            unpacked.parent.mkdir(parents=True, exist_ok=True)
            with unpacked.open("wb") as out:
                shutil.copyfileobj(handle, out, COPY_CHUNK_BYTES)
            return _memmap(unpacked, header_bytes, shape, dtype, fortran)
    with path.open("rb") as raw:  # stored: the array's bytes sit in the .npz itself, after the local header
        raw.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
        if fields[0] != b"PK\x03\x04":
            raise DatasetMismatchError(f"not a readable .npz file: bad local header for {info.filename!r}")
        data_offset = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    return _memmap(path, data_offset + header_bytes, shape, dtype, fortran)


def _memmap(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.empty(shape, dtype)
    if path.stat().st_size < offset + count * dtype.itemsize:
        raise DatasetMismatchError("not a readable .npz file: an array's data is truncated")
    order = "F" if fortran else "C"
    # copy-on-write: reads come from the file; a pass that writes into its data gets private pages
    return np.asarray(np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=shape, order=order))


def count_samples(arrays: dict[str, np.ndarray]) -> int:
    return count_samples_of({name: a.shape[0] if a.ndim else 0 for name, a in arrays.items()})


def count_samples_of(lengths: dict[str, int | None]) -> int:
    """Leading-axis length shared by all arrays; an upload with ragged arrays is refused.

    A 0-d array (length None) is one value shared by every sample and does not count; a dataset of
    0-d arrays only holds one sample.
    """
    if not lengths:
        raise DatasetMismatchError("the .npz holds no arrays")
    if all(n is None for n in lengths.values()):
        return 1
    lengths = {name: n for name, n in lengths.items() if n is not None}
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{name}: {n}" for name, n in lengths.items())
        raise DatasetMismatchError(f"arrays disagree on the number of samples (leading axis): {detail}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise DatasetMismatchError("the arrays hold no samples (leading axis is empty or scalars)")
    return n


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def describe_npz(path: Path) -> tuple[dict[str, dict[str, object]], int]:
    """Shapes and dtypes of an .npz's arrays read from the .npy headers only, and its sample count."""
    arrays: dict[str, dict[str, object]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    raise DatasetMismatchError(f"unexpected member {member!r}: an .npz holds only .npy arrays")
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read_header = _HEADER_READERS.get(version)
                    if read_header is None:
                        raise DatasetMismatchError(f"array {member[:-4]!r} uses an unknown .npy format {version}")
                    shape, _, dtype = read_header(handle, max_header_size=1 << 20)
                if dtype.hasobject:
                    raise DatasetMismatchError(f"array {member[:-4]!r} holds Python objects; use numeric arrays")
                arrays[member[:-4]] = {"shape": list(shape), "dtype": dtype.name}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DatasetMismatchError(f"not a readable .npz file: {exc}") from exc
    lengths = {name: info["shape"][0] if info["shape"] else None for name, info in arrays.items()}
    return arrays, count_samples_of(lengths)


def check_compatible(arrays: dict[str, dict[str, object]], inputs: list[TensorSpec]) -> None:
    """Validate stored array shapes against a model's inputs without loading the data."""
    views = {
        name: np.broadcast_to(np.zeros((), dtype=np.dtype(str(info["dtype"]))), tuple(info["shape"]))
        for name, info in arrays.items()
    }
    Dataset.bind(views, inputs, cast=False)


@dataclass
class Dataset:
    """Arrays validated against a model's inputs, with a single layout shared by every input.

    `scalars` names the rank-0 inputs: their arrays hold one value per sample (shape [n]) and each
    feed gets a 0-d array, in either layout.
    """

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    layout: Layout
    synthetic: bool = False
    scalars: frozenset[str] = frozenset()

    @property
    def n_samples(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    @classmethod
    def from_npz(cls, path: Path, inputs: list[TensorSpec], scratch: Path | None = None) -> Dataset:
        """Loaded whole, or with `scratch` memory-mapped (see the module's docstring)."""
        if scratch is None:
            return cls.bind(read_npz(path), inputs)
        return cls.bind(open_npz(path, scratch), inputs, scratch=scratch / f"{path.stem}-cast")

    @classmethod
    def bind(
        cls, arrays: dict[str, np.ndarray], inputs: list[TensorSpec], cast: bool = True, scratch: Path | None = None
    ) -> Dataset:
        arrays = dict(arrays)
        labels = arrays.pop(LABELS, None)
        expected = {spec.name for spec in inputs}
        missing = sorted(expected - arrays.keys())
        extra = sorted(arrays.keys() - expected)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing arrays for model inputs {missing}")
            if extra:
                parts.append(f"arrays {extra} match no model input")
            raise DatasetMismatchError(
                f"dataset does not match the model: {'; '.join(parts)} "
                f"(model inputs: {sorted(expected)}; optional extra array: '{LABELS}')"
            )
        layouts: dict[str, Layout] = {}
        bound: dict[str, np.ndarray] = {}
        shared: dict[str, np.ndarray] = {}
        for spec in inputs:
            array = np.asarray(arrays[spec.name])
            if not spec.shape and array.ndim == 0:  # one value for every sample
                _check_dtype(spec.name, array.dtype, spec)
                shared[spec.name] = _cast(array, spec) if cast else array
            elif cast:
                layouts[spec.name], bound[spec.name] = _bind_array(array, spec, scratch)
            else:
                layouts[spec.name], bound[spec.name] = _layout_for(spec.name, array.shape, array.dtype, spec), array
        if len(set(layouts.values())) > 1:
            scalar = sorted(name for name in layouts if name in {s.name for s in inputs if not s.shape})
            hint = f"; scalar input(s) {scalar} can also take one 0-d value shared by every sample" if scalar else ""
            raise DatasetMismatchError(
                f"inputs mix layouts {layouts}: give every input either its own rank (samples along the "
                f"batch axis) or rank + 1 (one complete input per leading entry){hint}"
            )
        n = count_samples(bound) if bound else 1
        if labels is not None and labels.shape[0] != n:
            raise DatasetMismatchError(f"'{LABELS}' has {labels.shape[0]} entries but the inputs hold {n} samples")
        for name, value in shared.items():
            bound[name] = np.broadcast_to(value, (n,))
        ordered = {spec.name: bound[spec.name] for spec in inputs}
        layout: Layout = next(iter(layouts.values())) if layouts else "stacked"
        scalars = frozenset(spec.name for spec in inputs if not spec.shape)
        return cls(arrays=ordered, labels=labels, layout=layout, scalars=scalars)

    @classmethod
    def synthetic_for(cls, inputs: list[TensorSpec], n_samples: int, seed: int = 0, symbolic_size: int = 1) -> Dataset:
        """Inputs drawn from the declared shapes, for when the user gave no data.

        Samples go along the batch axis when every non-scalar input has a symbolic first dimension;
        otherwise each sample is one complete input (stacked). Other symbolic dimensions get
        `symbolic_size`. A rank-0 input gets one value shared by every sample: a scalar is usually a
        setting (a sample rate, a threshold), not data.
        """
        rng = np.random.default_rng(seed)
        arrays: dict[str, np.ndarray] = {}
        tensors = [spec for spec in inputs if spec.shape]
        batched = bool(tensors) and all(not isinstance(spec.shape[0], int) for spec in tensors)
        for spec in inputs:
            dims = [d if isinstance(d, int) and d > 0 else symbolic_size for d in spec.shape]
            if not spec.shape:
                value = _random_array(rng, [], np.dtype(spec.dtype))
                arrays[spec.name] = np.broadcast_to(value, (n_samples,))
                continue
            shape = [n_samples, *dims[1:]] if batched else [n_samples, *dims]
            arrays[spec.name] = _random_array(rng, shape, np.dtype(spec.dtype))
        scalars = frozenset(spec.name for spec in inputs if not spec.shape)
        layout: Layout = "batched" if batched else "stacked"
        return cls(arrays=arrays, labels=None, layout=layout, synthetic=True, scalars=scalars)

    def take(self, n: int) -> Dataset:
        if n >= self.n_samples:
            return self
        return self.window(0, n)

    def window(self, start: int, stop: int) -> Dataset:
        """Samples start..stop (views, no copy), for streaming a dataset through in chunks."""
        labels = None if self.labels is None else self.labels[start:stop]
        arrays = {name: a[start:stop] for name, a in self.arrays.items()}
        return Dataset(arrays=arrays, labels=labels, layout=self.layout, synthetic=self.synthetic, scalars=self.scalars)

    def chunks(self, size: int) -> Iterator[Dataset]:
        """Consecutive windows of at most `size` samples."""
        step = max(size, 1)
        for start in range(0, self.n_samples, step):
            yield self.window(start, start + step)

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Feeds for onnxruntime: slices of the batch axis, or one stacked entry at a time.

        Every value is an np.ndarray of the input's rank; a rank-0 input gets a 0-d array (in the
        batched layout a scalar input always holds one value shared by every sample).
        """
        step = batch_size if self.layout == "batched" else 1
        for start in range(0, self.n_samples, step):
            stop = start + step
            labels = None if self.labels is None else self.labels[start:stop]
            feed: dict[str, np.ndarray] = {}
            for name, a in self.arrays.items():
                if self.layout == "batched" and name not in self.scalars:
                    feed[name] = a[start:stop]
                else:
                    feed[name] = a[start, ...]  # an array view (0-d for a scalar input), never a numpy scalar
            yield feed, labels

    def first_feed(self, batch_size: int) -> dict[str, np.ndarray]:
        return next(self.batches(batch_size))[0]


def _layout_for(name: str, shape: tuple[int, ...], dtype: np.dtype, spec: TensorSpec) -> Layout:
    """Which layout an array of this shape has for the input, or a message saying what to change."""
    rank = len(spec.shape)
    if len(shape) == rank:
        layout: Layout = "batched"
        per_sample = list(spec.shape[1:])
    elif len(shape) == rank + 1:
        layout = "stacked"
        per_sample = list(spec.shape)
    else:
        raise DatasetMismatchError(
            f"array '{name}' has shape {list(shape)} (rank {len(shape)}); input '{spec.name}' "
            f"has shape {spec.shape} (rank {rank}): give rank {rank} or {rank + 1}"
        )
    for axis, (want, got) in enumerate(zip(per_sample, shape[1:], strict=True)):
        if isinstance(want, int) and want > 0 and want != got:
            raise DatasetMismatchError(
                f"array '{name}' has shape {list(shape)} but input '{spec.name}' needs {spec.shape}: "
                f"array dimension {axis + 1} should be {want}, got {got}"
            )
    _check_dtype(name, dtype, spec)
    return layout


def _check_dtype(name: str, dtype: np.dtype, spec: TensorSpec) -> None:
    want_dtype = np.dtype(spec.dtype)
    if dtype != want_dtype and ((dtype.kind in "fc") != (want_dtype.kind in "fc") or dtype.kind in "OSUV"):
        raise DatasetMismatchError(
            f"array '{name}' has dtype {dtype.name}; input '{spec.name}' needs {want_dtype.name}"
        )


def _cast(array: np.ndarray, spec: TensorSpec, scratch: Path | None = None) -> np.ndarray:
    """The array in the input's dtype: in memory, or (with `scratch`) written there in chunks and memory-mapped."""
    want = np.dtype(spec.dtype)
    if array.dtype == want:
        return array
    if scratch is None or array.ndim == 0 or array.size == 0:
        return array.astype(want)
    scratch.mkdir(parents=True, exist_ok=True)
    target = np.lib.format.open_memmap(
        scratch / f"{len(list(scratch.iterdir()))}.npy", mode="w+", dtype=want, shape=array.shape
    )
    sample_bytes = max(array.dtype.itemsize, want.itemsize) * (array.size // array.shape[0])
    per_chunk = max(1, COPY_CHUNK_BYTES // max(1, sample_bytes))
    for start in range(0, array.shape[0], per_chunk):
        target[start : start + per_chunk] = array[start : start + per_chunk]
    target.flush()
    return np.asarray(np.load(target.filename, mmap_mode="c"))


def _bind_array(array: np.ndarray, spec: TensorSpec, scratch: Path | None = None) -> tuple[Layout, np.ndarray]:
    return _layout_for(spec.name, array.shape, array.dtype, spec), _cast(array, spec, scratch)


def _random_array(rng: np.random.Generator, shape: list[int], dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, 10, shape).astype(dtype)


@dataclass
class DatasetBundle:
    """The job's datasets by role; each is optional and passes say which they need."""

    calibration: Dataset | None = None
    train: Dataset | None = None
    eval: Dataset | None = None

    @classmethod
    def load(
        cls,
        paths: dict[str, Path | None],
        inputs: list[TensorSpec],
        scratch: Path | None = None,
        outputs: list[TensorSpec] | None = None,
    ) -> DatasetBundle:
        """Each role's dataset, memory-mapped when a `scratch` directory is given (see the module's docstring);
        with `outputs`, integer labels are checked against the classes the outputs score."""
        loaded: dict[str, Dataset | None] = {}
        for role in ("calibration", "train", "eval"):
            path = paths.get(role)
            try:
                where = scratch / role if scratch is not None else None
                loaded[role] = Dataset.from_npz(path, inputs, where) if path else None
                if loaded[role] is not None and outputs is not None:
                    check_labels_fit(loaded[role], outputs)
            except DatasetMismatchError as exc:
                raise DatasetMismatchError(f"{role} dataset: {exc.message}") from exc
        return cls(**loaded)


def check_labels_fit(dataset: Dataset, outputs: list[TensorSpec]) -> None:
    """Integer labels index a class some output scores: when every output declares a fixed last dimension and the
    largest label is past all of them, accuracy would silently be 0, so the dataset is refused saying so."""
    labels = dataset.labels
    if labels is None or labels.size == 0 or labels.dtype.kind not in "iu":
        return
    classes = [spec.shape[-1] for spec in outputs if spec.shape and isinstance(spec.shape[-1], int)]
    if not classes or len(classes) < len(outputs) or any(c <= 0 for c in classes):
        return  # a symbolic or unknown class count: nothing to check against
    high = int(labels.max())
    if high >= max(classes):
        scored = ", ".join(f"'{spec.name}' {spec.shape}" for spec in outputs)
        raise DatasetMismatchError(
            f"'{LABELS}' hold class index {high}, but the model's outputs ({scored}) score at most {max(classes)} "
            f"classes: labels must be class indices from 0 to {max(classes) - 1}"
        )
