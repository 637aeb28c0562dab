"""More train inputs for distillation from a few unlabeled ones: the teacher labels whatever it is shown.

A job may bring only a calibration-sized train set (8-32 samples). Fitting the teacher's outputs on so few
inputs overfits them; showing the teacher and the student new inputs near the data does not need labels.
Each copy mixes every sample with a random other one (weight 0.6-1.0 on the sample itself) and adds a
little noise (3% of each input's standard deviation). Only float inputs change; integer inputs (token ids,
sample rates) and rank-0 inputs keep the sample's own values. Labelled data is never augmented (mixed
inputs have no label).
"""

from __future__ import annotations

import math

import numpy as np

from compression.datasets import Dataset

AUTO_TARGET_SAMPLES = 128  # auto: copies until the train set has about this many samples
AUTO_MAX_COPIES = 7
MIX_LOW = 0.6
NOISE = 0.03


def auto_copies(dataset: Dataset) -> int:
    """Copies the default adds: enough to reach ~AUTO_TARGET_SAMPLES, none for labelled or large sets."""
    if dataset.labels is not None or dataset.n_samples >= AUTO_TARGET_SAMPLES or not _float_inputs(dataset):
        return 0
    return min(AUTO_MAX_COPIES, math.ceil(AUTO_TARGET_SAMPLES / dataset.n_samples) - 1)


def _float_inputs(dataset: Dataset) -> list[str]:
    return [name for name, a in dataset.arrays.items() if a.dtype.kind == "f" and name not in dataset.scalars]


def augment(dataset: Dataset, copies: int, seed: int) -> Dataset:
    """The dataset followed by `copies` mixed and noised copies of it (the dataset itself when nothing applies)."""
    floats = set(_float_inputs(dataset))
    if copies <= 0 or not floats or dataset.labels is not None or dataset.n_samples < 1:
        return dataset
    rng = np.random.default_rng(seed)
    n = dataset.n_samples
    parts: dict[str, list[np.ndarray]] = {name: [a] for name, a in dataset.arrays.items()}
    for _ in range(copies):
        other = rng.permutation(n)
        for name, a in dataset.arrays.items():
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
