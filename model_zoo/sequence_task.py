"""Synthetic token-sequence classification that needs attention: which marker token comes first.

Each sequence holds every one of ``NUM_CLASSES`` marker tokens exactly once, at random positions,
among random filler tokens; the label is the marker that appears earliest. Bag-of-tokens models see
the same multiset for every class, so only position-aware token mixing (attention) can solve it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEQ_LEN = 16
VOCAB = 32
NUM_CLASSES = 4
NUM_TRAIN = 6000
NUM_TEST = 1000
DATA_SEED = 1234


@dataclass(frozen=True)
class SequenceSplit:
    """int64 token ids [N, SEQ_LEN] and int64 labels [N]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = rng.integers(NUM_CLASSES, VOCAB, size=(n, SEQ_LEN), dtype=np.int64)
    positions = np.argsort(rng.random((n, SEQ_LEN)), axis=1)[:, :NUM_CLASSES]
    rows = np.arange(n)[:, None]
    tokens[rows, positions] = np.arange(NUM_CLASSES, dtype=np.int64)
    labels = np.argmin(positions, axis=1).astype(np.int64)
    return tokens, labels


def make_sequence_split(seed: int = DATA_SEED) -> SequenceSplit:
    """Deterministic train/test split of the first-marker task (independent of the model seed)."""
    rng = np.random.default_rng(seed)
    x_train, y_train = _sample(rng, NUM_TRAIN)
    x_test, y_test = _sample(rng, NUM_TEST)
    return SequenceSplit(x_train, y_train, x_test, y_test)
