"""More train inputs for distillation from a few unlabeled ones: the teacher labels whatever it is shown.

A job may bring only a calibration-sized train set (8-32 samples). Fitting the teacher's outputs on so few
inputs overfits them; showing the teacher and the student new inputs near the data does not need labels.
Each copy mixes every sample with a random other one (weight 0.6-1.0 on the sample itself) and adds a
little noise (3% of each input's standard deviation). Integer sequences (token ids, bytes: at least 4 values
per sample) get a tenth of their tokens replaced by tokens drawn from the set's own tokens, except in
the padding at the end of a sample (the value most samples end on, when at least half do), so lengths and
masks stay true. Integer scalars and short integer vectors (sample rates, lengths), booleans
(masks) and rank-0 inputs keep the sample's own values. Labelled data is never augmented (mixed inputs have
no label).
"""

from __future__ import annotations

import math

import numpy as np

from compression.datasets import Dataset

AUTO_TARGET_SAMPLES = 128  # auto: copies until the train set has about this many samples
AUTO_MAX_COPIES = 7
MIX_LOW = 0.6
NOISE = 0.03
TOKEN_SWAP = 0.1  # share of an integer sequence's (non-padding) tokens replaced in a copy
TOKEN_MIN_LENGTH = 4  # integer inputs with fewer values per sample are lengths or rates, never changed


def auto_copies(dataset: Dataset) -> int:
    """Copies the default adds: enough to reach ~AUTO_TARGET_SAMPLES, none for labelled or large sets."""
    if dataset.labels is not None or dataset.n_samples >= AUTO_TARGET_SAMPLES or not _changeable(dataset):
        return 0
    return min(AUTO_MAX_COPIES, math.ceil(AUTO_TARGET_SAMPLES / dataset.n_samples) - 1)


def _float_inputs(dataset: Dataset) -> list[str]:
    return [name for name, a in dataset.arrays.items() if a.dtype.kind == "f" and name not in dataset.scalars]


def _token_inputs(dataset: Dataset) -> list[str]:
    """Integer inputs holding sequences (token ids, bytes), not lengths or rates."""
    return [
        name
        for name, a in dataset.arrays.items()
        if a.dtype.kind in "iu" and name not in dataset.scalars and a.ndim >= 2 and a[0].size >= TOKEN_MIN_LENGTH
    ]


def _changeable(dataset: Dataset) -> bool:
    return bool(_float_inputs(dataset) or _token_inputs(dataset))


def _swap_tokens(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of `a` [n, ...] with TOKEN_SWAP of each sample's non-padding tokens drawn from the set's tokens."""
    flat = a.reshape(len(a), -1)
    values, counts = np.unique(flat[:, -1], return_counts=True)
    pad = np.zeros(flat.shape, dtype=bool)
    if counts.max() * 2 >= len(flat):  # most samples end on one value: the padding, at the end of each sample
        pad = np.flip(np.cumprod(np.flip(flat == values[counts.argmax()], axis=1), axis=1), axis=1).astype(bool)
    pool = flat[~pad]
    if pool.size == 0:
        return a.copy()
    swap = (rng.random(flat.shape) < TOKEN_SWAP) & ~pad
    out = flat.copy()
    out[swap] = rng.choice(pool, size=int(swap.sum()))
    return out.reshape(a.shape)


def augment(dataset: Dataset, copies: int, seed: int) -> Dataset:
    """The dataset followed by `copies` mixed and noised copies of it (the dataset itself when nothing applies)."""
    floats, tokens = set(_float_inputs(dataset)), set(_token_inputs(dataset))
    if copies <= 0 or not (floats or tokens) or dataset.labels is not None or dataset.n_samples < 1:
        return dataset
    rng = np.random.default_rng(seed)
    n = dataset.n_samples
    parts: dict[str, list[np.ndarray]] = {name: [a] for name, a in dataset.arrays.items()}
    for _ in range(copies):
        other = rng.permutation(n)
        for name, a in dataset.arrays.items():
            if name in tokens:
                parts[name].append(_swap_tokens(a, rng))
                continue
            if name not in floats:
                parts[name].append(a)
                continue
            weight = rng.uniform(MIX_LOW, 1.0, size=(n,) + (1,) * (a.ndim - 1)).astype(a.dtype)
            mixed = weight * a + (1 - weight) * a[other]
            std = float(a.std())
            if std > 0:
                mixed = mixed + rng.normal(0.0, NOISE * std, size=a.shape).astype(a.dtype)
            parts[name].append(mixed.astype(a.dtype))
    arrays = {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}
    return Dataset(arrays=arrays, labels=None, layout=dataset.layout, synthetic=dataset.synthetic,
                   scalars=dataset.scalars)  # fmt: skip
